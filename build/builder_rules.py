"""What TensorRT-LLM's builder will really do with the settings we ask `trtllm-build` for.

`trtllm-build` accepts `--reduce_fusion enable` for any model and then, for DeciLM, logs
"Overriding reduce_fusion to False" and builds without it. Rules like that one are data in
configs/trtllm/<version>.yaml (`builder_rules`, each cited to builder.py / _common.py /
commands/build.py); this module evaluates them, one function per rule id, in the builder's
order, so the planner states what the engine will have and the engine command never claims
a setting the builder drops. `check_settings` is the guard the command builder calls.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import Any

from nemo_trt.build.trtllm_target import TARGET_VERSION, load_target_data
from nemo_trt.errors import NemoTrtError


@dataclass(frozen=True)
class BuilderInputs:
    """The model facts and requested plugin/build settings the builder's rules look at."""

    architecture: str
    tp: int
    quant_algo: str | None  # "FP8" or None (BF16)
    kv_cache_quant_algo: str | None
    sm: int  # compute capability of the build GPU, e.g. 90
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int
    tokens_per_block: int
    use_paged_context_fmha: bool
    use_fp8_context_fmha: bool
    reduce_fusion: bool
    context_fmha: bool = True
    remove_input_padding: bool = True
    streamingllm: bool = False
    user_buffer: bool = False
    norm_quant_fusion: bool = False


@dataclass(frozen=True)
class Override:
    """One builder rule that changed a requested setting."""

    rule: str
    setting: str
    requested: Any
    effective: Any
    log: str  # the builder's own log line
    source: str  # file + function it was read from
    why: str = ""  # in this build's terms, where the log line alone does not say it

    def explain(self) -> str:
        why = f"{self.why}; " if self.why else ""
        return (f"{why}TensorRT-LLM's builder changes {self.setting} from {self.requested} to {self.effective} "
                f"(\"{self.log}\", {self.source})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BuilderRules:
    version: str
    sources: dict[str, str]
    rules: dict[str, dict] = field(repr=False)
    implied: list[dict] = field(repr=False)


@cache
def load_builder_rules(version: str = TARGET_VERSION) -> BuilderRules:
    data = load_target_data(version)
    try:
        section = data["builder_rules"]
        rules = {r["id"]: dict(r) for r in section["rules"]}
        for rid, rule in rules.items():
            if not {"setting", "where", "log"} <= set(rule):
                raise ValueError(f"rule {rid} needs setting, where and log")
        return BuilderRules(version=version, sources=dict(section["sources"]), rules=rules,
                            implied=list(section.get("implied", [])))
    except (KeyError, TypeError, ValueError) as exc:
        raise NemoTrtError(f"configs/trtllm/{version}.yaml has no valid builder_rules section: {exc}",
                           "restore it from the nemo-trt sources") from exc


# ----------------------------------------------------------------------------- the rules
# Each takes the current inputs and its rule data; returns the changed inputs and the overrides.

# A change is (setting, requested, effective, log line[, why]).
RuleFn = Callable[[BuilderInputs, dict], tuple[BuilderInputs, list[tuple]]]


def _max_input_len_clipped(s: BuilderInputs, r: dict):
    if s.max_input_len > s.max_seq_len:
        log = r["log"].format(max_input_len=s.max_input_len, max_seq_len=s.max_seq_len)
        return replace(s, max_input_len=s.max_seq_len), [("max_input_len", s.max_input_len, s.max_seq_len, log)]
    return s, []


def _max_num_tokens_without_padding_removal(s: BuilderInputs, r: dict):
    if not s.remove_input_padding:
        value = s.max_batch_size * s.max_seq_len
        if value != s.max_num_tokens:
            return replace(s, max_num_tokens=value), [("max_num_tokens", s.max_num_tokens, value, r["log"])]
    return s, []


def _max_num_tokens_clipped(s: BuilderInputs, r: dict):
    limit = s.max_seq_len * s.max_batch_size
    if s.remove_input_padding and s.max_num_tokens > limit:
        log = r["log"].format(max_num_tokens=s.max_num_tokens, limit=limit)
        return replace(s, max_num_tokens=limit), [("max_num_tokens", s.max_num_tokens, limit, log)]
    return s, []


def _max_num_tokens_raised(s: BuilderInputs, r: dict):
    if not s.remove_input_padding:
        return s, []
    if not s.context_fmha and s.max_num_tokens < s.max_input_len:
        floor = s.max_input_len
    elif s.context_fmha and s.max_num_tokens < s.tokens_per_block:
        floor = s.tokens_per_block
    else:
        return s, []
    log = r["log"].format(max_num_tokens=s.max_num_tokens, tokens_per_block=s.tokens_per_block)
    return replace(s, max_num_tokens=floor), [("max_num_tokens", s.max_num_tokens, floor, log)]


def _streamingllm_disables_paged_context_fmha(s: BuilderInputs, r: dict):
    if s.streamingllm and s.use_paged_context_fmha:
        return replace(s, use_paged_context_fmha=False), [("use_paged_context_fmha", True, False, r["log"])]
    return s, []


def _reduce_fusion_architecture(s: BuilderInputs, r: dict):
    if s.reduce_fusion and (s.tp == 1 or s.architecture not in r["keep_architectures"]):
        why = ("there is no all-reduce to fuse at TP1" if s.tp == 1 else
               f"{s.architecture or 'this architecture'} cannot use it: the builder keeps it only for "
               f"{', '.join(r['keep_architectures'])}")
        return replace(s, reduce_fusion=False), [("reduce_fusion", True, False, r["log"], why)]
    return s, []


def _user_buffer_needs_reduce_fusion(s: BuilderInputs, r: dict):
    if s.user_buffer and not s.reduce_fusion:
        return replace(s, user_buffer=False), [("user_buffer", True, False, r["log"])]
    return s, []


def _norm_quant_fusion_llama_nvfp4(s: BuilderInputs, r: dict):
    if s.norm_quant_fusion and (s.reduce_fusion or s.architecture != "LlamaForCausalLM" or s.quant_algo != "NVFP4"):
        return replace(s, norm_quant_fusion=False), [("norm_quant_fusion", True, False, r["log"])]
    return s, []


def _off(s: BuilderInputs, names: tuple[str, ...], logs: tuple[str, ...]):
    changes: dict[str, Any] = {}
    out = []
    for name, log in zip(names, logs):
        if getattr(s, name):
            changes[name] = False
            out.append((name, True, False, log))
    return replace(s, **changes), out


def _fp8_kv(s: BuilderInputs) -> bool:
    return s.kv_cache_quant_algo == "FP8"


def _context_fmha_off_disables_fp8_and_paged(s: BuilderInputs, r: dict):
    if not s.context_fmha:
        return _off(s, ("use_fp8_context_fmha", "use_paged_context_fmha"), (r["log"], r["log"]))
    return s, []


def _fp8_context_fmha_needs_fp8_quant(s: BuilderInputs, r: dict):
    if s.context_fmha and s.quant_algo not in r["fp8_quant_algos"]:
        names = ("use_fp8_context_fmha", "use_paged_context_fmha") if _fp8_kv(s) else ("use_fp8_context_fmha",)
        return _off(s, names, (r["log"], r["log_paged"]))
    return s, []


def _fp8_context_fmha_needs_sm89(s: BuilderInputs, r: dict):
    fp8 = load_builder_rules().rules["fp8_context_fmha_needs_fp8_quant"]["fp8_quant_algos"]
    if s.context_fmha and s.quant_algo in fp8 and s.sm < int(r["min_sm"]):
        names = ("use_fp8_context_fmha", "use_paged_context_fmha") if _fp8_kv(s) else ("use_fp8_context_fmha",)
        return _off(s, names, (r["log"], r["log_paged"]))
    return s, []


def _fp8_branch(s: BuilderInputs) -> bool:
    """The builder's last elif: FP8-family quantization on SM >= 89 with paged context FMHA."""
    rules = load_builder_rules().rules
    return (s.context_fmha and s.quant_algo in rules["fp8_context_fmha_needs_fp8_quant"]["fp8_quant_algos"]
            and s.sm >= int(rules["fp8_context_fmha_needs_sm89"]["min_sm"]) and s.use_paged_context_fmha)


def _fp8_paged_context_fmha_needs_fp8_kv(s: BuilderInputs, r: dict):
    if _fp8_branch(s) and not _fp8_kv(s) and s.use_fp8_context_fmha:
        return replace(s, use_fp8_context_fmha=False), [("use_fp8_context_fmha", True, False, r["log"])]
    return s, []


def _fp8_kv_forces_fp8_context_fmha(s: BuilderInputs, r: dict):
    if _fp8_branch(s) and _fp8_kv(s) and not s.use_fp8_context_fmha:
        return replace(s, use_fp8_context_fmha=True), [("use_fp8_context_fmha", False, True, r["log"])]
    return s, []


RULES: dict[str, RuleFn] = {
    "max_input_len_clipped": _max_input_len_clipped,
    "max_num_tokens_without_padding_removal": _max_num_tokens_without_padding_removal,
    "max_num_tokens_clipped": _max_num_tokens_clipped,
    "max_num_tokens_raised": _max_num_tokens_raised,
    "streamingllm_disables_paged_context_fmha": _streamingllm_disables_paged_context_fmha,
    "reduce_fusion_architecture": _reduce_fusion_architecture,
    "user_buffer_needs_reduce_fusion": _user_buffer_needs_reduce_fusion,
    "norm_quant_fusion_llama_nvfp4": _norm_quant_fusion_llama_nvfp4,
    "context_fmha_off_disables_fp8_and_paged": _context_fmha_off_disables_fp8_and_paged,
    "fp8_context_fmha_needs_fp8_quant": _fp8_context_fmha_needs_fp8_quant,
    "fp8_context_fmha_needs_sm89": _fp8_context_fmha_needs_sm89,
    "fp8_paged_context_fmha_needs_fp8_kv": _fp8_paged_context_fmha_needs_fp8_kv,
    "fp8_kv_forces_fp8_context_fmha": _fp8_kv_forces_fp8_context_fmha,
}
# The FP8 context FMHA rules are one if/elif chain in build(); their conditions above are mutually
# exclusive (context_fmha, quant_algo and sm, which no branch changes), so at most one applies.


def apply_builder_rules(inputs: BuilderInputs, version: str = TARGET_VERSION) -> tuple[BuilderInputs, list[Override]]:
    """(what the builder ends up with, the overrides that got it there), in the builder's order."""
    rules = load_builder_rules(version)
    missing = set(rules.rules) ^ set(RULES)
    if missing:
        raise NemoTrtError(f"builder rules in configs/trtllm/{version}.yaml and nemo_trt.build.builder_rules differ: "
                           f"{sorted(missing)}", "this is a nemo-trt bug: every rule id needs one implementation")
    state, overrides = inputs, []
    for rid, data in rules.rules.items():
        state, changes = RULES[rid](state, data)
        source = f"{data['where']} @ TensorRT-LLM {version}"
        overrides += [Override(rid, change[0], change[1], change[2], change[3], source, *change[4:])
                      for change in changes]
    return state, overrides


def check_settings(inputs: BuilderInputs, version: str = TARGET_VERSION) -> None:
    """Refuse settings the builder would silently change: what we emit must be what the engine gets."""
    _, overrides = apply_builder_rules(inputs, version)
    if overrides:
        raise NemoTrtError(
            "the build asks for settings TensorRT-LLM's builder would silently change: "
            + "; ".join(o.explain() for o in overrides),
            "re-plan with `nemo-trt plan` / `nemo-trt build` (the planner applies these builder rules; see "
            f"configs/trtllm/{version}.yaml builder_rules)")


def sm_version(compute_capability: str) -> int:
    """"9.0" -> 90, "8.9" -> 89 (TensorRT-LLM's get_sm_version())."""
    major, _, minor = str(compute_capability).partition(".")
    return int(major) * 10 + int(minor or 0)


# ----------------------------------------------------------------------------- plans

_QUANT = {"fp8": "FP8", "bf16": None}


def inputs_for(architecture: str, *, tp: int, precision: str, kv_cache_dtype: str, compute_capability: str,
               settings: Any) -> BuilderInputs:
    """BuilderInputs from BuildSettings (or a dict of the same fields) of a plan."""
    def get(key: str) -> Any:
        return settings[key] if isinstance(settings, dict) else getattr(settings, key)

    return BuilderInputs(
        architecture=architecture, tp=int(tp), quant_algo=_QUANT[str(precision)],
        kv_cache_quant_algo=_QUANT[str(kv_cache_dtype)], sm=sm_version(compute_capability),
        max_batch_size=int(get("max_batch_size")), max_input_len=int(get("max_input_len")),
        max_seq_len=int(get("max_seq_len")), max_num_tokens=int(get("max_num_tokens")),
        tokens_per_block=int(get("tokens_per_block")), use_paged_context_fmha=bool(get("use_paged_context_fmha")),
        use_fp8_context_fmha=bool(get("use_fp8_context_fmha")), reduce_fusion=bool(get("reduce_fusion")),
    )


def inputs_from_plan(plan: Any) -> BuilderInputs:
    """A plan's builder inputs. A plan without an architecture (written before it was recorded) gets
    none, so only rules that hold for every architecture let its settings through."""
    return inputs_for(str(getattr(plan, "architecture", "") or ""), tp=plan.tp, precision=plan.precision,
                      kv_cache_dtype=getattr(plan, "kv_cache_dtype", plan.precision),
                      compute_capability=getattr(plan, "compute_capability", "9.0"), settings=plan.build)


def implied_settings(*, precision: str, world_size: int, gemm_plugin: str, dtype: str = "bfloat16") -> dict[str, str]:
    """What the engine gets that no flag sets (builder_rules.implied), as values for this build."""
    return {
        "gpt_attention_plugin": f"{dtype} (auto = the checkpoint dtype)",
        "gemm_plugin": f"{dtype} (auto = the checkpoint dtype)" if gemm_plugin == "auto" else str(gemm_plugin),
        "nccl_plugin": dtype if world_size > 1 else "disabled (world size 1)",
        "paged_state": "off (not a Mamba/RecurrentGemma model)",
        "strongly_typed": "true",
        "use_fused_mlp": "on (gate and fc GEMMs fused)",
    }
