"""HF (DeciLM / Llama) -> TensorRT-LLM checkpoint conversion, BF16 or FP8, streaming.

Public API (stable; used by `nemo-trt convert`, `nemo-trt verify` and the build pipeline):

    from nemo_trt.build.convert import convert_checkpoint, verify_checkpoint, read_converted_as_hf

    result = convert_checkpoint(checkpoint, output, *, tp, pp=1, precision="bf16",
                                kv_cache_dtype=None,      # None -> "bf16"; "fp8" adds kv_cache_scaling_factor
                                workers=1,                # >1: rank files written by spawned processes
                                force=False,              # replace an existing output made from other inputs
                                calib_prompts=None,       # FILE (lines or JSONL); None -> built-in varied set
                                device="cpu",             # calibration device: "cpu" | "cuda"
                                progress=True,            # rich progress bar on stderr
                                calibrator="reference")   # or "modelopt" (needs nvidia-modelopt)
        -> ConversionResult(output, tp, pp, precision, kv_cache_dtype, up_to_date, files{name: sha256},
                            bytes_written, seconds, calibration)   # .to_dict() for JSON
    Same inputs again -> up_to_date=True and nothing is touched. Errors: NemoTrtError (nothing written).

    report = verify_checkpoint(checkpoint, converted, *, logits=True, prompts=4)
        -> VerifyReport(ok, problems[list[str]], tensors_checked, worst[list[TensorError]], logits{...})
           .to_dict(); checks manifest hashes, config vs spec, every tensor (exact for BF16,
           bounded relative error for FP8) and, with logits=True, reference-model logits from both sides.

    spec, tensors = read_converted_as_hf(converted)   # Iterator[(hf_name, Tensor)], FP8 dequantized

Modules: mapping (ranks, PP layer ranges), weight_map (names + split rules, pure), trtllm_config
(config.json), fp8 (scales), calibrate, source (HF reader + ModelOpt metadata), writer (streaming
safetensors), converter (jobs), manifest, reader, api.
"""
from nemo_trt.build.convert.api import ConversionResult, convert_checkpoint
from nemo_trt.build.convert.reader import read_converted_as_hf


def verify_checkpoint(checkpoint, converted, *, logits: bool = True, prompts: int = 4):
    """See nemo_trt.build.verify.verify_checkpoint (prompts: how many built-in prompts the logit check uses)."""
    from nemo_trt.build.verify import verify_checkpoint as _verify

    return _verify(checkpoint, converted, logits=logits, prompts=prompts)


__all__ = ["ConversionResult", "convert_checkpoint", "read_converted_as_hf", "verify_checkpoint"]
