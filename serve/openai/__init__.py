"""OpenAI-compatible API in front of Triton (`nemo-trt openai`, `nemo-trt serve --openai-port`).

Layers, one module each (data flows top to bottom):
- protocol: the wire format (pydantic request/response models), nothing else;
- errors / auth / metrics: OpenAI error bodies and status codes, bearer key, Prometheus;
- reasoning, stops, tools, budget: pure text logic on the generated stream (reasoning
  mode and token accounting, stop strings, `<TOOLCALL>` parsing into streamed OpenAI
  tool-call deltas, the thinking budget's continuation);
- upstream: tritonclient's asyncio gRPC stream to the `ensemble` model (no Python hop
  inside Triton);
- generation: one request's legs through upstream and the text logic, as events;
- chat / completions: events -> OpenAI responses and SSE chunks;
- app / runner: the FastAPI application and uvicorn.
"""
