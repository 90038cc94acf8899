"""Engine regression: run a YAML suite against a Triton server, record a golden file, check against it.

Data flows one way: suite (YAML) -> runner (tritonclient via nemo_trt.serve.client) -> observations
-> compare (pure) -> report (table / JSON / JUnit). `golden` holds the recorded file format.
"""
