"""FP8 calibration of a BF16 checkpoint: activation and KV-cache ranges from real forward passes.

`reference` calibrator (default): the PyTorch reference model (`nemo_trt.reference`, module
names == HF names) runs the calibration prompts; a forward pre-hook on every `nn.Linear`
records max |input| (-> `activation_scaling_factor = amax / 448`, the static per-tensor
scale ModelOpt's FP8_DEFAULT_CFG produces), and a forward hook on `k_proj` / `v_proj`
records the KV range. TensorRT-LLM caches K *after* RoPE; RoPE (gpt-neox layout) rotates the
pairs (i, i + d/2), so max_i sqrt(k_i^2 + k_{i+d/2}^2) bounds |k| after RoPE at any position —
we use that bound, never an under-estimate.

`modelopt` calibrator: NVIDIA ModelOpt's `mtq.quantize(model, FP8_DEFAULT_CFG [+ FP8_KV_CFG])`
on the same reference model, reading the amax of each `input_quantizer` (and the k/v output
quantizers). It needs `nvidia-modelopt` (not installed by default). Differences: ModelOpt
measures K after its own quantizer placement (the bmm inputs, post-RoPE) instead of our
bound, and may apply its own percentile/clip settings; weights are quantized identically
(per-tensor amax / 448) by nemo-trt in both cases.

The whole model is loaded for calibration (float32 on CPU, bfloat16 on CUDA), so calibration —
unlike the streaming conversion — needs the model in memory.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nemo_trt.errors import NemoTrtError

CALIBRATORS = ("reference", "modelopt")

# Varied default set: reasoning, code, maths, chat, multilingual, long-ish context, tool-like JSON.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Explain why the sky is blue in two short paragraphs.",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "Solve: a train leaves at 14:05 and travels 180 km at 72 km/h. When does it arrive? Show the steps.",
    "Summarise the plot of Romeo and Juliet for a ten-year-old.",
    "Traduis en français : « The meeting is postponed until next Tuesday because of the storm. »",
    "List five practical tips for reducing the memory use of a large language model at inference time.",
    "What is the derivative of x^3 * sin(x)? Explain each rule you apply.",
    "Return a JSON object with fields name, age and skills for a fictional data engineer.",
    "写一首关于秋天的四行短诗。",
    "Compare TCP and UDP in a table with four rows.",
    "A user says their Kubernetes pod is stuck in CrashLoopBackOff. Walk through how to debug it.",
    "Give a SQL query that returns the top three customers by total order value in 2024.",
    "Is 1,000,003 prime? Reason carefully before answering.",
    "Draft a polite email declining a meeting invitation and proposing two alternative times.",
    "Explain the difference between precision and recall with a medical-test example.",
    "Continue the story: The lighthouse keeper found a letter in a bottle that was addressed to her.",
)


@dataclass(frozen=True)
class Calibration:
    act_amax: dict[str, float]   # HF linear module -> max |input|
    kv_amax: dict[int, float]    # layer -> max(|k| post-RoPE bound, |v|)
    settings: dict


def load_prompts(path: str | Path | None) -> list[str]:
    """One prompt per line, or JSONL with a "prompt"/"text" field; the built-in set when path is None."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    path = Path(path)
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise NemoTrtError(f"cannot read calibration prompts {path}: {exc}", "pass a UTF-8 text or JSONL file") from exc
    prompts = []
    for i, line in enumerate(lines, 1):
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
                prompts.append(str(obj.get("prompt", obj.get("text"))))
                if prompts[-1] == "None":
                    raise KeyError
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise NemoTrtError(f"{path}:{i}: JSONL line needs a \"prompt\" or \"text\" field",
                                   "write one prompt per line, or JSON objects with a prompt field") from exc
        else:
            prompts.append(line)
    if not prompts:
        raise NemoTrtError(f"{path} holds no prompts", "write one calibration prompt per line")
    return prompts


def settings(prompts: list[str], calibrator: str, device: str) -> dict:
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    return {"calibrator": calibrator, "device": device, "prompts": len(prompts), "prompts_sha256": digest}


def tokenize_prompts(checkpoint: Path, prompts: list[str], vocab_size: int) -> tuple[list[list[int]], str]:
    """Render with the chat template (reasoning on/off alternating) and tokenize; (ids, how)."""
    tok_path = checkpoint / "tokenizer.json"
    if not tok_path.is_file():
        # No tokenizer in the checkpoint (synthetic test models): UTF-8 bytes as ids.
        return [[b % vocab_size for b in p.encode()] for p in prompts], "utf8-bytes"
    from tokenizers import Tokenizer

    from nemo_trt.build.tokenizer_files import render_chat

    template = None
    tc = checkpoint / "tokenizer_config.json"
    if tc.is_file():
        template = json.loads(tc.read_text()).get("chat_template")
    if template is None:
        from nemo_trt.model_facts import load_serving_facts
        template = load_serving_facts().chat_template
    tok = Tokenizer.from_file(str(tok_path))
    out = []
    for i, p in enumerate(prompts):
        system = f"detailed thinking {'on' if i % 2 == 0 else 'off'}"
        text = render_chat([{"role": "system", "content": system}, {"role": "user", "content": p}], template)
        ids = tok.encode(text, add_special_tokens=False).ids
        out.append([t for t in ids if t < vocab_size])
    return out, "chat-template"


def _device_dtype(device: str) -> tuple[torch.device, torch.dtype]:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise NemoTrtError("--device cuda was given but no CUDA device is available", "use --device cpu")
        return torch.device("cuda"), torch.bfloat16
    if device != "cpu":
        raise NemoTrtError(f"unknown device {device!r}", "use --device cpu or --device cuda")
    return torch.device("cpu"), torch.float32


def _rope_pair_bound(k: torch.Tensor, head_dim: int) -> float:
    """Upper bound of |k| after gpt-neox RoPE: max over (i, i+d/2) pairs of their 2-norm."""
    k = k.float().reshape(-1, head_dim)
    half = head_dim // 2
    return float(torch.sqrt(k[:, :half] ** 2 + k[:, half:] ** 2).max()) if k.numel() else 0.0


def calibrate(checkpoint: str | Path, prompts: list[str], *, device: str = "cpu",
              calibrator: str = "reference", kv: bool = True, max_tokens: int = 512) -> Calibration:
    if calibrator not in CALIBRATORS:
        raise NemoTrtError(f"unknown calibrator {calibrator!r}", f"use one of: {', '.join(CALIBRATORS)}")
    from nemo_trt.reference import ReferenceModel

    checkpoint = Path(checkpoint)
    dev, dtype = _device_dtype(device)
    model = ReferenceModel.from_hf(checkpoint, dtype=dtype).to(dev)
    spec = model.spec
    token_lists, how = tokenize_prompts(checkpoint, prompts, spec.vocab_size)
    token_lists = [ids[:max_tokens] for ids in token_lists if ids]
    if calibrator == "modelopt":
        act, kvs = _calibrate_modelopt(model, token_lists, dev)
    else:
        act, kvs = _calibrate_reference(model, token_lists, dev, spec.head_dim, kv)
    return Calibration(act, kvs, {**settings(prompts, calibrator, device), "tokenization": how,
                                  "tokens": sum(len(t) for t in token_lists)})


def _calibrate_reference(model, token_lists, dev, head_dim: int, kv: bool):
    act: dict[str, float] = {}
    kvs: dict[int, float] = {}
    hooks = []

    def pre(name):
        def hook(_mod, args):
            act[name] = max(act.get(name, 0.0), float(args[0].detach().abs().max()))
        return hook

    def post(layer, is_k):
        def hook(_mod, _args, out):
            value = _rope_pair_bound(out.detach(), head_dim) if is_k else float(out.detach().abs().max())
            kvs[layer] = max(kvs.get(layer, 0.0), value)
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "lm_head":
            hooks.append(mod.register_forward_pre_hook(pre(name)))
            if kv and name.endswith(("self_attn.k_proj", "self_attn.v_proj")):
                hooks.append(mod.register_forward_hook(post(int(name.split(".")[2]), name.endswith("k_proj"))))
    try:
        with torch.inference_mode():
            for ids in token_lists:
                model(torch.tensor([ids], device=dev))
    finally:
        for h in hooks:
            h.remove()
    return act, kvs


def _calibrate_modelopt(model, token_lists, dev):  # pragma: no cover - needs nvidia-modelopt
    try:
        import modelopt.torch.quantization as mtq
    except ImportError as exc:
        raise NemoTrtError("--calibrator modelopt needs NVIDIA ModelOpt, which is not installed",
                           "pip install nvidia-modelopt, or use the built-in --calibrator reference") from exc
    cfg = {**mtq.FP8_DEFAULT_CFG}
    cfg["quant_cfg"] = {**cfg["quant_cfg"], **mtq.FP8_KV_CFG["quant_cfg"], "*lm_head*": {"enable": False}}

    def loop(m):
        with torch.inference_mode():
            for ids in token_lists:
                m(torch.tensor([ids], device=dev))

    mtq.quantize(model, cfg, forward_loop=loop)
    act: dict[str, float] = {}
    kvs: dict[int, float] = {}
    for name, mod in model.named_modules():
        q = getattr(mod, "input_quantizer", None)
        if q is not None and getattr(q, "amax", None) is not None:
            act[name] = float(q.amax.max())
        for attr in ("k_bmm_quantizer", "v_bmm_quantizer", "output_quantizer"):
            oq = getattr(mod, attr, None)
            if oq is not None and getattr(oq, "amax", None) is not None and ".self_attn" in name:
                layer = int(name.split(".")[2])
                kvs[layer] = max(kvs.get(layer, 0.0), float(oq.amax.max()))
    return act, kvs
