"""Triton gRPC requests built straight from plain values (the gateway's and the load generator's).

tritonclient's InferInput path costs ~70 µs of numpy and checks per request
(bench/results/openai_gateway.md); these are the same bytes
(tests/test_openai_generation.py::test_infer_request_is_byte_identical_to_tritonclients).
"""
from __future__ import annotations

import struct
from typing import Any

_STRUCT = {"BOOL": "?", "INT32": "i", "FP32": "f", "UINT64": "Q"}

Tensor = tuple[str, str, list[Any]]  # (input name, Triton datatype, its elements: sent as shape [1, n])


def raw_contents(datatype: str, values: list[Any]) -> bytes:
    """Elements -> Triton's raw tensor bytes: little-endian numbers; BYTES as a 4-byte length and
    the data each (str as UTF-8)."""
    if datatype == "BYTES":
        data = (v if isinstance(v, bytes) else v.encode("utf-8") for v in values)
        return b"".join(struct.pack("<I", len(v)) + v for v in data)
    return struct.pack(f"<{len(values)}{_STRUCT[datatype]}", *values)


def infer_request(model: str, tensors: list[Tensor], outputs: list[str], request_id: str = "") -> Any:
    """A ModelInferRequest protobuf (tritonclient's own service module)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, datatype, values in tensors:
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend((1, len(values)))
        request.raw_input_contents.append(raw_contents(datatype, values))
    for name in outputs:
        request.outputs.add().name = name
    return request
