"""PyTorch reference model of the DeciLM architecture (shared by build verification and the CPU server).

    from nemo_trt.reference import ReferenceModel, SamplingParams
    model = ReferenceModel.from_hf(checkpoint_dir)
    ids = model.generate(prompt_ids, max_new_tokens=64, stop_ids=[128009])
"""
from nemo_trt.reference.model import KVCache, ReferenceModel, llama_config
from nemo_trt.reference.sampling import SamplingParams
from nemo_trt.reference.session import Session

__all__ = ["KVCache", "ReferenceModel", "SamplingParams", "Session", "llama_config"]
