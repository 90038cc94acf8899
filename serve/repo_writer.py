"""Write a self-contained Triton model repository in the stock TensorRT-LLM layout:
ensemble = preprocessing -> tensorrt_llm -> postprocessing (per-stream text state:
detokenization + reasoning split), with `tensorrt_llm` served by the TensorRT-LLM C++
backend (engines) or the CPU reference backend (a converted checkpoint, Python model with
the same tensor contract); plus `ensemble_tokens`, the same ensemble without postprocessing
for clients that detokenize themselves (nemo_trt.serve.token_ensemble).

Every `${placeholder}` of the templates in model_repository/ is filled; optional
TensorRT-LLM parameters without a value are removed (the backend default applies)
instead of being left unfilled, which is the most common way stock repositories break
(triton-trtllm-repository.md §12 #1). Each written config.pbtxt is parsed with
Triton's own ModelConfig protobuf and the ensemble wiring (model, tensor names and
types of every step) is checked against the composing models before the repository
is renamed into place. Tokenizer files are copied into the repository and referenced
by relative paths, so the repository can be moved or mounted elsewhere.

The repository's path-independent identity (nemo_trt.serve.repo_identity: engines or
checkpoint by content, tokenizer, limits, `engine_id`) is written into the ensemble's
config as the JSON string parameter `nemo_trt_repository`, where clients read it through
Triton, and into `nemo_trt_repository.json` (key `identity`) next to the models.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nemo_trt import __version__
from nemo_trt.atomic import atomic_dir
from nemo_trt.errors import NemoTrtError
from nemo_trt.model_facts import DEFAULT_MODEL, load_serving_facts
from nemo_trt.resources import model_repository_dir
from nemo_trt.serve.postprocess import DEFAULT_STREAM_CAPACITY
from nemo_trt.serve.token_ensemble import TOKEN_ENSEMBLE, token_ensemble_config, token_ensemble_text
from nemo_trt.serve.repo_identity import (identity_from_model_config, identity_parameter_value, make_identity,
                                         reference_checkpoint_identity, tokenizer_file_hashes, trtllm_engine_identity)

MANIFEST_NAME = "nemo_trt_repository.json"
TOKENIZER_SUBDIR = "tokenizer"  # inside preprocessing/: a top-level dir would be loaded as a model
EXECUTOR_WORKER = "/opt/tritonserver/backends/tensorrtllm/trtllmExecutorWorker"
DEFAULT_MAX_TOKENS = 4096
REFERENCE_DEFAULT_MAX_SEQ_LEN = 4096
REFERENCE_DEFAULT_MAX_BATCH = 8
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PARAMETER_BLOCK = re.compile(
    r'^[ \t]*parameters:\s*\{\s*key:\s*"[^"]*"\s*value:\s*\{\s*string_value:\s*"\$\{(\w+)\}"\s*\}\s*\}[ \t]*\n?',
    re.MULTILINE,
)


@dataclass(frozen=True)
class ServingLimits:
    max_batch_size: int
    max_input_len: int
    max_seq_len: int
    max_num_tokens: int | None
    default_max_tokens: int
    source: str  # where they came from: "plan", "engine config.json", "reference defaults"


@dataclass(frozen=True)
class RuntimeSettings:
    """TensorRT-LLM executor settings (tensorrt_llm parameters)."""

    kv_cache_free_gpu_mem_fraction: float = 0.9
    max_tokens_in_paged_kv_cache: int | None = None
    enable_kv_cache_reuse: bool = False
    enable_chunked_context: bool = False
    batch_scheduler_policy: str = "guaranteed_no_evict"
    source: str = "defaults"


# ----------------------------------------------------------------------------- filling


def fill_template(text: str, values: dict[str, Any], where: str) -> str:
    """Substitute `${name}`; a `parameters` block whose value maps to None is removed.

    Raises if a placeholder has no entry in `values`, or if a None value sits outside
    a parameters block (it would break protobuf parsing), or if anything is left.
    """

    def drop_unset(match: re.Match) -> str:
        name = match.group(1)
        if name not in values:
            raise NemoTrtError(f"{where}: no value for placeholder ${{{name}}}",
                               "this is a nemo-trt bug: the template and the writer disagree")
        return "" if values[name] is None else match.group(0)

    def fill(match: re.Match, comment: bool) -> str:
        name = match.group(1)
        if name not in values:
            raise NemoTrtError(f"{where}: no value for placeholder ${{{name}}}",
                               "this is a nemo-trt bug: the template and the writer disagree")
        value = values[name]
        if comment:  # documentation in the template: say what was filled
            return f"{name}=" + ("(unset)" if value is None else _format(value))
        if value is None:
            raise NemoTrtError(f"{where}: placeholder ${{{name}}} is required here but has no value",
                               "this is a nemo-trt bug: the writer must provide it")
        return _format(value)

    text = _PARAMETER_BLOCK.sub(drop_unset, text)
    text = "".join(
        _PLACEHOLDER.sub(functools.partial(fill, comment=line.lstrip().startswith("#")), line)
        for line in text.splitlines(keepends=True)
    )
    if "${" in text:
        raise NemoTrtError(f"{where}: unfilled placeholder left: {text[text.index('${'):][:60]!r}",
                           "this is a nemo-trt bug: report it")
    return text


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_model_config(text: str, where: str):
    """Parse config.pbtxt text with Triton's ModelConfig protobuf (what tritonserver does)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise NemoTrtError(f"{where} is not a valid Triton model config: {exc}",
                           "this is a nemo-trt bug: report it with the file") from exc
    return config


def check_ensemble(configs: dict[str, Any], ensemble_name: str = "ensemble") -> None:
    """Every step's model exists, its mapped tensors exist with matching types, every
    internal tensor is produced by an earlier step, and `tensorrt_llm`'s output_ids /
    sequence_length fit `postprocessing`'s TOKENS_BATCH / SEQUENCE_LENGTH (stock wiring)."""
    ensemble = configs[ensemble_name]
    types: dict[str, int] = {t.name: t.data_type for t in ensemble.input}
    problems = []
    for step in ensemble.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"step model {step.model_name!r} is not in the repository")
            continue
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        for key, tensor in step.input_map.items():
            if key not in inputs:
                problems.append(f"{step.model_name} has no input {key!r}")
            elif tensor not in types:
                problems.append(f"{step.model_name}.{key} reads {tensor!r}, which no earlier step produces")
            elif types[tensor] != inputs[key].data_type:
                problems.append(f"{step.model_name}.{key} type differs from {tensor!r}")
        for key, tensor in step.output_map.items():
            if key not in outputs:
                problems.append(f"{step.model_name} has no output {key!r}")
            else:
                types[tensor] = outputs[key].data_type
        for name, tensor in inputs.items():
            if not tensor.optional and name not in step.input_map:
                problems.append(f"{step.model_name} requires input {name!r}, which the ensemble does not map")
    for output in ensemble.output:
        if output.name not in types:
            problems.append(f"{ensemble_name} output {output.name!r} is produced by no step")
    # Stock ensembles and BLS models feed tensorrt_llm's outputs to postprocessing.
    llm_out = {t.name: t for t in configs["tensorrt_llm"].output}
    post_in = {t.name: t for t in configs["postprocessing"].input}
    for source, target in (("output_ids", "TOKENS_BATCH"), ("sequence_length", "SEQUENCE_LENGTH")):
        if source not in llm_out or target not in post_in:
            problems.append(f"tensorrt_llm.{source} -> postprocessing.{target}: one of them is missing")
        elif llm_out[source].data_type != post_in[target].data_type or \
                list(llm_out[source].dims) != list(post_in[target].dims):
            problems.append(f"tensorrt_llm.{source} does not fit postprocessing.{target} (type or dims)")
    if problems:
        raise NemoTrtError(f"the {ensemble_name} wiring is inconsistent: " + "; ".join(problems),
                           "this is a nemo-trt bug: the templates disagree")


# ----------------------------------------------------------------------------- inputs


def _build(plan: Any) -> Any:
    return getattr(plan, "build", plan)


def _read_json(path: Path, what: str, fix: str) -> dict:
    if not path.is_file():
        raise NemoTrtError(f"{path.parent} has no {path.name}: it is not {what}", fix)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise NemoTrtError(f"{path} is not valid JSON: {exc}", fix) from exc


def _engine_info(engine_dir: Path) -> tuple[dict, dict | None]:
    fix = "build engines with `nemo-trt build` and pass their directory with --engine"
    if not engine_dir.is_dir():
        raise NemoTrtError(f"engine directory {engine_dir} does not exist", fix)
    config = _read_json(engine_dir / "config.json", "a TensorRT-LLM engine directory", fix)
    if "build_config" not in config:
        raise NemoTrtError(f"{engine_dir / 'config.json'} has no build_config: it is not an engine config "
                           "(a converted checkpoint, perhaps?)", fix)
    mapping = config.get("pretrained_config", {}).get("mapping", {})
    world = int(mapping.get("world_size") or int(mapping.get("tp_size", 1)) * int(mapping.get("pp_size", 1)))
    missing = [f"rank{r}.engine" for r in range(world) if not (engine_dir / f"rank{r}.engine").is_file()]
    if missing:
        raise NemoTrtError(f"{engine_dir} lacks {', '.join(missing)} (world size {world})", fix)
    manifest = None
    path = engine_dir / "engine_manifest.json"
    if path.is_file():
        manifest = _read_json(path, "an engine manifest", fix)
    return config, manifest


def limits_from_plan(plan: Any, source: str = "plan") -> ServingLimits:
    b = _build(plan)
    max_seq_len = int(b.max_seq_len)
    return ServingLimits(int(b.max_batch_size), int(b.max_input_len), max_seq_len,
                         int(b.max_num_tokens) if getattr(b, "max_num_tokens", None) else None,
                         min(DEFAULT_MAX_TOKENS, max_seq_len), source)


def _engine_limits(config: dict) -> ServingLimits:
    bc = config["build_config"]
    max_seq_len = int(bc["max_seq_len"])
    return ServingLimits(int(bc["max_batch_size"]), int(bc["max_input_len"]), max_seq_len,
                         int(bc["max_num_tokens"]) if bc.get("max_num_tokens") else None,
                         min(DEFAULT_MAX_TOKENS, max_seq_len), "engine config.json")


def _runtime_settings(plan: Any, engine_config: dict) -> RuntimeSettings:
    plugin = engine_config["build_config"].get("plugin_config", {})
    paged_context = bool(plugin.get("use_paged_context_fmha", False))
    if plan is None:
        # Reuse and chunked context need paged context FMHA in the engine (§12 #9).
        return RuntimeSettings(enable_kv_cache_reuse=paged_context, enable_chunked_context=paged_context,
                               source="engine config.json")
    b = _build(plan)
    settings = RuntimeSettings(
        kv_cache_free_gpu_mem_fraction=float(b.kv_cache_free_gpu_mem_fraction),
        max_tokens_in_paged_kv_cache=int(getattr(plan, "kv_tokens", 0) or 0) or None,
        enable_kv_cache_reuse=bool(b.enable_kv_cache_reuse),
        enable_chunked_context=bool(b.enable_chunked_context),
        batch_scheduler_policy=str(b.batch_scheduler_policy),
        source="plan",
    )
    if (settings.enable_kv_cache_reuse or settings.enable_chunked_context) and not paged_context:
        raise NemoTrtError(
            "the plan enables KV cache reuse / chunked context, but the engine was built without paged "
            "context FMHA (\"When KV cache block reuse is set, model has to be built with paged context FMHA\")",
            "rebuild the engines from this plan (`nemo-trt build`), or write the repository without --gpu "
            "so the settings follow the engine",
        )
    return settings


def _check_plan_matches_engine(plan: Any, limits: ServingLimits) -> None:
    b = _build(plan)
    diffs = [f"{name} plan {getattr(b, name)} vs engine {getattr(limits, name)}"
             for name in ("max_batch_size", "max_input_len", "max_seq_len")
             if int(getattr(b, name)) != getattr(limits, name)]
    if diffs:
        raise NemoTrtError("the plan does not match the engine: " + ", ".join(diffs),
                           "use the plan the engines were built with, or omit --gpu to follow the engine")


def _plan_from_manifest(manifest: dict | None) -> Any:
    if not manifest or not manifest.get("plan"):
        return None
    try:
        from nemo_trt.build.planner import Plan

        return Plan.model_validate(manifest["plan"])
    except Exception:  # noqa: BLE001 - an older/partial plan dump: fall back to the engine config
        return None


def _engine_identity(manifest: dict | None, engine_config: dict) -> dict | None:
    if manifest is None:
        return None
    keys = ("trtllm_version", "tensorrt_version", "container_image", "created_at", "profile", "precision",
            "tp", "pp", "world_size", "config_sha256", "checkpoint_fingerprint", "source_fingerprint")
    identity = {k: manifest.get(k) for k in keys if manifest.get(k) is not None}
    identity["engines"] = [{"name": e.get("name"), "sha256": e.get("sha256")} for e in manifest.get("engines", [])]
    return identity


def _check_tokenizer(tokenizer_dir: Path, vocab_size: Any) -> dict[str, str]:
    """Refuse a tokenizer that cannot serve this model; return {file name: sha256} of the files to copy."""
    fix = "pass --tokenizer a directory with the model's tokenizer.json (e.g. the HF checkpoint directory)"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise NemoTrtError(f"{tokenizer_dir} has no tokenizer.json", fix)
    from tokenizers import Tokenizer

    from nemo_trt.serve.prompt import BOS, END_HEADER, EOT, START_HEADER

    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    except Exception as exc:  # noqa: BLE001 - any load failure is a bad tokenizer file
        raise NemoTrtError(f"{tokenizer_dir / 'tokenizer.json'} cannot be loaded: {exc}", fix) from exc
    missing = [t for t in (BOS, START_HEADER, END_HEADER, EOT) if tokenizer.token_to_id(t) is None]
    if missing:
        raise NemoTrtError(f"{tokenizer_dir / 'tokenizer.json'} cannot serve this model: it has no "
                           f"{', '.join(missing)} (not a Llama-3 tokenizer)", fix)
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab_size and size > int(vocab_size):
        raise NemoTrtError(f"the tokenizer has {size} tokens but the model's vocabulary is {vocab_size}: "
                           "they do not belong together",
                           "pass --tokenizer the tokenizer of the checkpoint the engine/reference was built from")
    return tokenizer_file_hashes(tokenizer_dir)


def _copy_tokenizer(tokenizer_dir: Path, target: Path, files: dict[str, str]) -> None:
    target.mkdir(parents=True)
    for name in files:
        shutil.copy2(tokenizer_dir / name, target / name)


def _copy_model(template: Path, target: Path) -> None:
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".gitkeep"))


# ----------------------------------------------------------------------------- writer


def write_repository(
    output: str | Path,
    *,
    tokenizer_dir: str | Path,
    engine_dir: str | Path | None = None,
    reference_dir: str | Path | None = None,
    plan: Any = None,
    reasoning: str = "on",
    instances: int = 1,
    force: bool = False,
    serving_model: str = DEFAULT_MODEL,
    templates: str | Path | None = None,
) -> Path:
    """Write the repository to `output` atomically; return its path."""
    output = Path(output).absolute()
    if (engine_dir is None) == (reference_dir is None):
        raise NemoTrtError("give exactly one backend: an engine directory or a reference checkpoint",
                           "pass --engine ENGINE_DIR (TensorRT-LLM, GPU) or --reference CONVERTED_DIR (CPU)")
    if reasoning not in ("on", "off"):
        raise NemoTrtError(f"reasoning must be 'on' or 'off', got {reasoning!r}", "pass --reasoning on|off")
    if instances < 1:
        raise NemoTrtError(f"instances must be >= 1, got {instances}", "pass --instances 1 or more")
    if output.exists() and not force:
        raise NemoTrtError(f"{output} already exists", "pass --force to replace it, or choose another --output")
    templates = Path(templates) if templates else model_repository_dir()
    facts = load_serving_facts(serving_model)
    tokenizer_dir = Path(tokenizer_dir).absolute()

    manifest: dict[str, Any] = {
        "format": 1,
        "written_by": f"nemo-trt {__version__}",
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "serving_model": facts.name,
        "default_reasoning": reasoning,
        "preprocessing_instances": instances,
        "tokenizer_source": str(tokenizer_dir),
    }
    values: dict[str, Any] = {
        "max_queue_delay_microseconds": 0,
        "max_queue_size": 0,
        "tokenizer_dir": TOKENIZER_SUBDIR,
        "postprocessing_tokenizer_dir": f"../preprocessing/{TOKENIZER_SUBDIR}",
        "serving_model": facts.name,
        "default_reasoning": reasoning,
        "preprocessing_instance_count": instances,
    }

    engine_config: dict | None = None
    if engine_dir is not None:
        engine_dir = Path(engine_dir).absolute()
        engine_config, engine_manifest = _engine_info(engine_dir)
        limits = _engine_limits(engine_config)
        if plan is not None:
            _check_plan_matches_engine(plan, limits)
        else:
            plan = _plan_from_manifest(engine_manifest)
        runtime = _runtime_settings(plan, engine_config)
        engine_identity = trtllm_engine_identity(engine_dir, engine_config, engine_manifest)
        vocab = engine_config.get("pretrained_config", {}).get("vocab_size")
        mapping = engine_config.get("pretrained_config", {}).get("mapping", {})
        manifest.update({
            "backend": "tensorrtllm",
            "engine_dir": str(engine_dir),
            "engine": _engine_identity(engine_manifest, engine_config),
            "engine_config_sha256": hashlib.sha256((engine_dir / "config.json").read_bytes()).hexdigest(),
            "tp": int(mapping.get("tp_size", 1)),
            "pp": int(mapping.get("pp_size", 1)),
            "world_size": int(mapping.get("world_size", 1)),
            "precision": getattr(plan, "precision", None) or (engine_manifest or {}).get("precision"),
            "runtime_settings": asdict(runtime),
        })
        values.update({
            "triton_backend": "tensorrtllm",
            "decoupled_mode": True,
            "logits_datatype": "TYPE_FP32",
            "batching_strategy": "inflight_fused_batching",
            "engine_dir": str(engine_dir),
            "max_beam_width": 1,
            "force_cpu_only_input_tensors": "no",
            "encoder_engine_dir": None,
            "max_tokens_in_paged_kv_cache": runtime.max_tokens_in_paged_kv_cache,
            "max_attention_window_size": None,
            "sink_token_length": None,
            "batch_scheduler_policy": runtime.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": runtime.kv_cache_free_gpu_mem_fraction,
            "cross_kv_cache_fraction": None,
            "kv_cache_host_memory_bytes": None,
            "kv_cache_onboard_blocks": None,
            "exclude_input_in_output": True,
            "cancellation_check_period_ms": 100,
            "stats_check_period_ms": 100,
            "iter_stats_max_iterations": None,
            "request_stats_max_iterations": None,
            "enable_kv_cache_reuse": runtime.enable_kv_cache_reuse,
            "normalize_log_probs": True,
            "enable_chunked_context": runtime.enable_chunked_context,
            "gpu_device_ids": None,
            "participant_ids": None,
            "num_nodes": None,
            "lora_cache_optimal_adapter_size": None,
            "lora_cache_max_adapter_size": None,
            "lora_cache_gpu_memory_fraction": None,
            "lora_cache_host_memory_bytes": None,
            "lora_prefetch_dir": None,
            "decoding_mode": "top_k_top_p",
            "executor_worker_path": EXECUTOR_WORKER,
            "lookahead_window_size": None,
            "lookahead_ngram_size": None,
            "lookahead_verification_set_size": None,
            "medusa_choices": None,
            "eagle_choices": None,
            "gpu_weights_percent": None,
            "enable_context_fmha_fp32_acc": False,
            "multi_block_mode": True,
            "cuda_graph_mode": False,
            "cuda_graph_cache_size": None,
            "speculative_decoding_fast_logits": None,
            # Mandatory reads in getGuidedDecodingConfigFromParams (no fallback: an absent key fails
            # the load); "" is the backend's "unset", so guided decoding stays off.
            "tensorrt_llm_tokenizer_dir": "",
            "guided_decoding_backend": "",
            "xgrammar_tokenizer_info_path": "",
        })
        llm_template = templates / "tensorrt_llm"
    else:
        assert reference_dir is not None  # exactly one backend was given (checked above)
        reference_dir = Path(reference_dir).absolute()
        fix = "pass --reference the directory written by `nemo-trt convert` (or an HF checkpoint directory)"
        config = _read_json(reference_dir / "config.json", "a model checkpoint", fix)
        vocab = config.get("vocab_size")
        if plan is not None:
            limits = limits_from_plan(plan)
        else:
            positions = int(config.get("max_position_embeddings") or REFERENCE_DEFAULT_MAX_SEQ_LEN)
            max_seq_len = min(positions, REFERENCE_DEFAULT_MAX_SEQ_LEN)
            limits = ServingLimits(REFERENCE_DEFAULT_MAX_BATCH, max_seq_len - 1, max_seq_len, None,
                                   min(DEFAULT_MAX_TOKENS, max_seq_len), "reference defaults")
        engine_identity = reference_checkpoint_identity(reference_dir)
        manifest.update({
            "backend": "reference",
            "reference_dir": str(reference_dir),
            "reference_config_sha256": hashlib.sha256((reference_dir / "config.json").read_bytes()).hexdigest(),
            "precision": getattr(plan, "precision", None),
        })
        values.update({
            "reference_checkpoint_dir": str(reference_dir),
            "reference_max_active": limits.max_batch_size,
            "exclude_input_in_output": True,
            "reference_num_threads": None,
        })
        llm_template = templates / "tensorrt_llm_reference"
    values.update({
        # Streams whose text state postprocessing keeps: far above what can run at once.
        "postprocessing_stream_capacity": max(DEFAULT_STREAM_CAPACITY, 16 * limits.max_batch_size),
        "triton_max_batch_size": limits.max_batch_size,
        "max_input_len": limits.max_input_len,
        "max_seq_len": limits.max_seq_len,
        "default_max_tokens": limits.default_max_tokens,
    })
    manifest["limits"] = asdict(limits)
    tokenizer_files = _check_tokenizer(tokenizer_dir, vocab)
    # Served through Triton (ensemble parameter) so `nemo-trt regress` can tell which engine answered.
    identity = make_identity(backend=manifest["backend"], engine=engine_identity, tokenizer_files=tokenizer_files,
                             max_input_len=limits.max_input_len, max_seq_len=limits.max_seq_len,
                             default_reasoning=reasoning, serving_model=facts.name)
    values["nemo_trt_repository"] = identity_parameter_value(identity)
    manifest["identity"] = identity
    manifest["engine_id"] = identity["engine_id"]

    with atomic_dir(output, replace=force) as tmp:
        configs = {}
        for name, template in (("ensemble", templates / "ensemble"), ("preprocessing", templates / "preprocessing"),
                               ("tensorrt_llm", llm_template), ("postprocessing", templates / "postprocessing")):
            if not (template / "config.pbtxt").is_file():
                raise NemoTrtError(f"template {template} is missing", "reinstall nemo-trt")
            _copy_model(template, tmp / name)
            (tmp / name / "1").mkdir(exist_ok=True)
            where = f"{name}/config.pbtxt"
            text = fill_template((template / "config.pbtxt").read_text(encoding="utf-8"), values, where)
            configs[name] = parse_model_config(text, where)
            if configs[name].name and configs[name].name != name:
                raise NemoTrtError(f"{where} names the model {configs[name].name!r}", "this is a nemo-trt bug")
            (tmp / name / "config.pbtxt").write_text(text, encoding="utf-8")
        _check_backend_contract(configs["tensorrt_llm"], manifest["backend"], engine_config)
        check_ensemble(configs)
        configs[TOKEN_ENSEMBLE] = token_ensemble_config(configs["ensemble"], configs["tensorrt_llm"])
        check_ensemble(configs, TOKEN_ENSEMBLE)
        (tmp / TOKEN_ENSEMBLE / "1").mkdir(parents=True)
        (tmp / TOKEN_ENSEMBLE / "config.pbtxt").write_text(token_ensemble_text(configs[TOKEN_ENSEMBLE]),
                                                            encoding="utf-8")
        if identity_from_model_config(configs["ensemble"]) != identity:
            raise NemoTrtError("ensemble/config.pbtxt does not carry the repository identity intact",
                               "this is a nemo-trt bug: the identity parameter is escaped wrongly")
        _copy_tokenizer(tokenizer_dir, tmp / "preprocessing" / TOKENIZER_SUBDIR, tokenizer_files)
        manifest["tokenizer_files"] = tokenizer_files
        manifest["models"] = sorted(configs)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return output


def _check_backend_contract(config: Any, backend: str, engine_config: dict | None) -> None:
    """The written `tensorrt_llm` config against the TensorRT-LLM backend's contract (configs/trtllm/)."""
    from nemo_trt.serve.backend_contract import validate_reference_config, validate_tensorrt_llm_config

    if backend == "tensorrtllm":
        logits = (engine_config or {}).get("pretrained_config", {}).get("logits_dtype")
        validate_tensorrt_llm_config(config, engine_logits_dtype=logits)
    else:
        validate_reference_config(config)


def read_repository_manifest(repository: str | Path) -> dict:
    path = Path(repository) / MANIFEST_NAME
    return _read_json(path, "a nemo-trt model repository", "write one with `nemo-trt repo`")
