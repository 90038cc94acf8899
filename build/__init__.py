"""HF checkpoint → TensorRT-LLM: architecture spec, GPU profiles and planner, conversion, engines."""
