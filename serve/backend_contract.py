"""The TensorRT-LLM Triton backend's contract for the `tensorrt_llm` model, and checks against it.

The contract is data (configs/trtllm/<version>.yaml, section `tensorrtllm_backend`, every group
cited to the backend source): each model parameter the C++ backend reads, whether an absent key
fails the model load or falls back (and to what), the value forms its parser accepts, and the
model's input/output tensors. No backend runs on a CPU machine, so this is what keeps
`nemo-trt repo` / `nemo-trt build` from writing a repository the backend would refuse, or would
silently read differently from what was meant:

- `parameter_problems`: a mandatory key missing, a key the backend does not read, a value its
  parser rejects (or only "accepts" by falling back to a default), a cross-key requirement;
- `tensor_problems`: a declared tensor with another type, dims, reshape, optional or ragged flag
  than the backend reads it as, an unknown tensor, a required tensor missing;
- `validate_tensorrt_llm_config`: both, plus the model-config rules (backend, logits types,
  required outputs); raises one NemoTrtError naming every problem with the upstream reason.

The CPU reference backend (a Python model standing in for `tensorrt_llm`) claims the same tensor
contract but has its own parameters: `validate_reference_config` checks its tensors only, and
allows the tensors later TensorRT-LLM releases add (`later_releases`), which it implements.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from nemo_trt.build.trtllm_target import TARGET_VERSION, load_target_data
from nemo_trt.errors import NemoTrtError

PLACEHOLDER = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
_INT = re.compile(r"^[+-]?\d+$")
_UINT = re.compile(r"^\+?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_INT_LIST = re.compile(r"^\s*[+-]?\d+\s*(,\s*[+-]?\d+\s*)*$")
_INT_LIST_LIST = re.compile(r"^\{[^{}]+\}(\s*,\s*\{[^{}]+\})*$")
_RANGES = {"int32": (-(2 ** 31), 2 ** 31 - 1), "uint32": (0, 2 ** 32 - 1), "uint64": (0, 2 ** 64 - 1)}
TYPES = ("string", "bool", "int32", "uint32", "uint64", "float", "int_list", "int_list_groups", "int_list_list")


@dataclass(frozen=True)
class ParameterRule:
    name: str
    type: str
    read_by: str
    missing: str  # "fatal" | "fallback"
    default: str = ""
    choices: tuple[str, ...] = ()
    invalid: str = "fallback"  # what a value outside `choices` does: "fatal" | "fallback"
    invalid_error: str = ""
    unset: tuple[str, ...] = ()  # string values the reader compares against to mean "unset"
    required_when: tuple[tuple[str, str], ...] = ()
    required_error: str = ""
    deprecated: str = ""
    nonempty: bool = False
    note: str = ""

    @property
    def mandatory(self) -> bool:
        return self.missing == "fatal"


@dataclass(frozen=True)
class TensorRule:
    name: str
    data_type: str  # TYPE_* or a ${placeholder} resolved per config (logits_datatype)
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    optional: bool = True
    ragged: bool = False
    read_as: str | None = None
    note: str = ""


@dataclass(frozen=True)
class BackendContract:
    version: str
    sources: dict[str, str]
    value_forms: dict[str, dict]
    missing_key_error: str
    parameters: dict[str, ParameterRule]
    template_only: dict[str, dict]
    inputs: dict[str, TensorRule]
    outputs: dict[str, TensorRule]
    undeclared_inputs: dict[str, TensorRule]
    later_inputs: dict[str, TensorRule]
    later_outputs: dict[str, TensorRule]
    logits_datatypes: tuple[str, ...]
    required_outputs: tuple[str, ...]
    required_outputs_error: str
    model_config: dict[str, Any] = field(default_factory=dict)

    @property
    def mandatory_parameters(self) -> list[str]:
        return sorted(k for k, r in self.parameters.items() if r.mandatory)

    def cite(self, group: str) -> str:
        return self.sources.get(group, "")


def _tensor(raw: dict) -> TensorRule:
    reshape = raw.get("reshape")
    return TensorRule(name=str(raw["name"]), data_type=str(raw.get("data_type", "")),
                      dims=tuple(int(d) for d in raw.get("dims", ())),
                      reshape=None if reshape is None else tuple(int(d) for d in reshape),
                      optional=bool(raw.get("optional", True)), ragged=bool(raw.get("ragged", False)),
                      read_as=raw.get("read_as"), note=str(raw.get("note", "")))


def _parse(data: dict, version: str) -> BackendContract:
    try:
        raw = data["tensorrtllm_backend"]
        params = {}
        for name, spec in raw["parameters"].items():
            if spec["type"] not in TYPES:
                raise ValueError(f"parameter {name}: type {spec['type']!r} not in {TYPES}")
            if spec["missing"] not in ("fatal", "fallback"):
                raise ValueError(f"parameter {name}: missing must be fatal or fallback")
            params[name] = ParameterRule(
                name=name, type=spec["type"], read_by=str(spec["read_by"]), missing=spec["missing"],
                default=str(spec.get("default", "")), choices=tuple(str(c) for c in spec.get("choices", ())),
                invalid=str(spec.get("invalid", "fallback")), invalid_error=str(spec.get("invalid_error", "")),
                unset=tuple(str(u) for u in spec.get("unset", ())),
                required_when=tuple((str(k), str(v)) for k, v in (spec.get("required_when") or {}).items()),
                required_error=str(spec.get("required_error", "")), deprecated=str(spec.get("deprecated", "")),
                nonempty=bool(spec.get("nonempty", False)), note=str(spec.get("note", "")),
            )
        mc = raw["model_config"]
        later = raw.get("later_releases", {})
        return BackendContract(
            version=version, sources=dict(raw["sources"]), value_forms=dict(raw["value_forms"]),
            missing_key_error=str(raw["missing_key_error"]), parameters=params,
            template_only=dict(raw.get("template_only", {})),
            inputs={t["name"]: _tensor(t) for t in raw["inputs"]},
            outputs={t["name"]: _tensor(t) for t in raw["outputs"]},
            undeclared_inputs={t["name"]: _tensor(t) for t in raw.get("undeclared_inputs", [])},
            later_inputs={t["name"]: _tensor(t) for t in later.get("inputs", [])},
            later_outputs={t["name"]: _tensor(t) for t in later.get("outputs", [])},
            logits_datatypes=tuple(mc["logits_datatypes"]), required_outputs=tuple(mc["required_outputs"]),
            required_outputs_error=str(mc["required_outputs_error"]), model_config=dict(mc),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise NemoTrtError(f"configs/trtllm/{version}.yaml has no valid tensorrtllm_backend section: {exc}",
                           "restore it from the nemo-trt sources") from exc


@cache
def load_backend_contract(version: str = TARGET_VERSION) -> BackendContract:
    return _parse(load_target_data(version), version)


# ----------------------------------------------------------------------------- parameter values


def _is_unset(rule: ParameterRule, value: str) -> bool:
    """The value means "unset" to the backend: a compared-against sentinel, or a ${...} placeholder
    that a fallback read fails to parse (the stock templates' way of leaving a key unset)."""
    if value in rule.unset:
        return True
    return bool(PLACEHOLDER.match(value)) and rule.type != "string" and rule.missing == "fallback"


def _form_problem(rule: ParameterRule, value: str, contract: BackendContract) -> str | None:
    """Why `value` is not a form the backend parses as meant, else None."""
    forms = contract.value_forms
    kind = rule.type
    if kind == "string":
        if PLACEHOLDER.match(value) or "${" in value:
            return (f"{value!r} is an unfilled placeholder, which GetParameter<std::string> returns verbatim: the "
                    "backend would use it literally")
        if rule.nonempty and not value:
            return "is empty"
        return None
    if kind == "bool":
        accepted = [*forms["bool"]["accepts_true"], *forms["bool"]["accepts_false"]]
        if value not in accepted:
            return (f"{value!r} is not a boolean GetParameter<bool> knows ({'/'.join(accepted)}): "
                    + forms["bool"]["error"].format(value=value))
        return None
    if kind in _RANGES:
        pattern = _INT if kind == "int32" else _UINT
        lo, hi = _RANGES[kind]
        if not pattern.match(value) or not lo <= int(value) <= hi:
            return f"{value!r} is not a {kind} ({forms[kind]['parser']}: {forms[kind]['rule']})"
        return None
    if kind == "float":
        if not _FLOAT.match(value):
            return f"{value!r} is not a float ({forms['float']['parser']}: {forms['float']['rule']})"
        return None
    if kind == "int_list":
        if not _INT_LIST.match(value):
            return f"{value!r} is not a comma-separated int list ({forms['int_list']['parser']})"
        return None
    if kind == "int_list_groups":
        if value and not all(_INT_LIST.match(group) for group in value.split(";")):
            return f"{value!r} is not ';'-separated comma int lists ({forms['int_list_groups']['parser']})"
        return None
    if kind == "int_list_list":
        inner_ok = all(_INT_LIST.match(g) for g in re.findall(r"\{([^{}]*)\}", value))
        if not _INT_LIST_LIST.match(value) or not inner_ok:
            return f"{value!r} is not braced int lists like {{0}},{{0,1}} ({forms['int_list_list']['parser']})"
        return None
    raise AssertionError(kind)


def _consequence(rule: ParameterRule) -> str:
    if rule.missing == "fatal":
        return "the model fails to load"
    return f"the backend logs a warning and uses its default ({rule.default})"


def parameter_problems(params: Mapping[str, str], contract: BackendContract | None = None) -> list[str]:
    """Every way `params` (key -> string_value) breaks the backend's parameter contract."""
    contract = contract or load_backend_contract()
    problems: list[str] = []
    for name, rule in sorted(contract.parameters.items()):
        if rule.mandatory and name not in params:
            problems.append(
                f"parameter {name!r} is missing: {rule.read_by} reads it without a fallback, so the model fails "
                f"to load with \"{contract.missing_key_error.format(key=name)}\"")
    for name, value in sorted(params.items()):
        known = contract.parameters.get(name)
        if known is None:
            if name in contract.template_only:
                continue
            problems.append(f"parameter {name!r} is not read by the TensorRT-LLM {contract.version} backend "
                            "(a typo, or a key of another release): it would be silently ignored")
            continue
        rule = known
        if rule.deprecated:
            problems.append(f"parameter {name!r} is deprecated and ignored by the backend (\"{rule.deprecated}\")")
            continue
        if _is_unset(rule, value):
            continue
        problem = _form_problem(rule, value, contract)
        if problem:
            problems.append(f"parameter {name!r} {problem}; {_consequence(rule)}")
            continue
        if rule.choices and value not in rule.choices:
            reason = f" (\"{rule.invalid_error}\")" if rule.invalid_error else ""
            then = "the model fails to load" if rule.invalid == "fatal" else \
                f"the backend logs a warning and uses its default ({rule.default})"
            problems.append(f"parameter {name!r} = {value!r} is not one of {list(rule.choices)}{reason}; {then}")
    problems += _cross_key_problems(params, contract)
    return problems


def _set(params: Mapping[str, str], contract: BackendContract, name: str) -> bool:
    value = params.get(name)
    return value is not None and not _is_unset(contract.parameters[name], value) and value != ""


def _cross_key_problems(params: Mapping[str, str], contract: BackendContract) -> list[str]:
    problems = []
    for name, rule in sorted(contract.parameters.items()):
        for key, want in rule.required_when:
            if params.get(key) == want and not _set(params, contract, name):
                problems.append(f"parameter {name!r} is required when {key} is {want!r}: the model fails to load "
                                f"(\"{rule.required_error}\")")
    backend = _set(params, contract, "guided_decoding_backend")
    info = _set(params, contract, "xgrammar_tokenizer_info_path")
    if backend != info:
        problems.append("guided decoding needs both guided_decoding_backend and xgrammar_tokenizer_info_path "
                        "(getGuidedDecodingConfigFromParams): with only one set it stays silently off")
    if not _set(params, contract, "gpt_model_path") and not _set(params, contract, "encoder_model_path"):
        problems.append("neither gpt_model_path nor encoder_model_path is set: the model fails to load "
                        "(\"Both encoder and decoder model paths are empty\")")
    return problems


# ----------------------------------------------------------------------------- tensors


def _dtype_name(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.DataType.Name(value)


def _resolve(rule: TensorRule, placeholders: Mapping[str, str | None]) -> str | None:
    """The data type a ${placeholder} type stands for in this config (None: any)."""
    match = re.match(r"^\$\{(\w+)\}$", rule.data_type)
    return placeholders.get(match.group(1)) if match else rule.data_type


def _tensor_mismatch(kind: str, declared: Any, rule: TensorRule,
                     placeholders: Mapping[str, str | None]) -> list[str]:
    out = []
    want_type = _resolve(rule, placeholders)
    got_type = _dtype_name(declared.data_type)
    if want_type is not None and got_type != want_type:
        read = f", and the backend reads its buffer as {rule.read_as}" if rule.read_as else ""
        out.append(f"{kind} {rule.name!r} is {got_type}, the backend's is {want_type}{read}")
    if tuple(declared.dims) != rule.dims:
        out.append(f"{kind} {rule.name!r} has dims {list(declared.dims)}, the backend's are {list(rule.dims)}")
    if kind == "input":
        reshape = tuple(declared.reshape.shape) if declared.HasField("reshape") else None
        if reshape != rule.reshape:
            out.append(f"input {rule.name!r} reshape {list(reshape) if reshape is not None else None} differs from "
                       f"the backend's {list(rule.reshape) if rule.reshape is not None else None}")
        if bool(declared.optional) != rule.optional:
            out.append(f"input {rule.name!r} is declared {'optional' if declared.optional else 'required'}, the "
                       f"backend's is {'optional' if rule.optional else 'required'}")
        if bool(declared.allow_ragged_batch) != rule.ragged:
            out.append(f"input {rule.name!r} allow_ragged_batch is {bool(declared.allow_ragged_batch)}, the "
                       f"backend's is {rule.ragged}")
    return out


def tensor_problems(config: Any, contract: BackendContract | None = None, *, allow_later: bool = False,
                    require_all_required: bool = True) -> list[str]:
    """Declared inputs/outputs of a `tensorrt_llm` ModelConfig against the backend's tensors."""
    contract = contract or load_backend_contract()
    outputs = {t.name: t for t in config.output}
    logits_types = {_dtype_name(outputs[n].data_type) for n in ("context_logits", "generation_logits") if n in outputs}
    placeholders = {"logits_datatype": next(iter(logits_types)) if len(logits_types) == 1 else None}
    problems = []
    known_in = {**contract.inputs, **contract.undeclared_inputs, **(contract.later_inputs if allow_later else {})}
    known_out = {**contract.outputs, **(contract.later_outputs if allow_later else {})}
    for kind, declared, known, later, effect in (
            ("input", config.input, known_in, contract.later_inputs, "it never reaches the executor"),
            ("output", config.output, known_out, contract.later_outputs, "it is never filled")):
        for tensor in declared:
            rule = known.get(tensor.name)
            if rule is None:
                note = " (a later TensorRT-LLM release's tensor)" if tensor.name in later else ""
                problems.append(f"{kind} {tensor.name!r} is not an {kind} of the TensorRT-LLM {contract.version} "
                                f"backend{note}: {effect}")
            else:
                problems += _tensor_mismatch(kind, tensor, rule, placeholders)
    declared_in = {t.name for t in config.input}
    if require_all_required:
        for name, rule in contract.inputs.items():
            if not rule.optional and name not in declared_in:
                problems.append(f"input {name!r} is required by the backend's contract but not declared")
    for name in contract.required_outputs:
        if name not in outputs:
            problems.append(f"output {name!r} is not declared: every request fails with \""
                            f"{contract.required_outputs_error.format(name=name)}\"")
    if len(logits_types) > 1:
        problems.append("context_logits and generation_logits have different data types; the backend reads one "
                        "logits type for both (ModelState::LoadParameters)")
    for dtype in logits_types:
        if dtype not in contract.logits_datatypes:
            problems.append(f"logits outputs are {dtype}: the backend writes only {list(contract.logits_datatypes)} "
                            "(\"Logits type is not supported\")")
    return problems


# ----------------------------------------------------------------------------- whole configs


_TORCH_TO_TRITON = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16"}


def tensorrt_llm_config_problems(config: Any, contract: BackendContract | None = None, *,
                                 engine_logits_dtype: str | None = None) -> list[str]:
    contract = contract or load_backend_contract()
    problems = []
    if config.backend != "tensorrtllm":
        problems.append(f"backend is {config.backend!r}, not 'tensorrtllm'")
    if not config.parameters:
        problems.append("the config has no parameters at all: the backend throws \"Model config doesn't have a "
                        "parameters section\" on its first read")
    params = {k: v.string_value for k, v in config.parameters.items()}
    problems += parameter_problems(params, contract)
    problems += tensor_problems(config, contract)
    if engine_logits_dtype is not None:
        want = _TORCH_TO_TRITON.get(engine_logits_dtype, engine_logits_dtype)
        for tensor in config.output:
            if tensor.name in ("context_logits", "generation_logits") and _dtype_name(tensor.data_type) != want:
                problems.append(f"output {tensor.name!r} is {_dtype_name(tensor.data_type)} but the engine's logits "
                                f"are {engine_logits_dtype} (TLLM_CHECK in fillTritonResponse fails the request)")
    return problems


def validate_tensorrt_llm_config(config: Any, where: str = "tensorrt_llm/config.pbtxt", *,
                                 engine_logits_dtype: str | None = None,
                                 contract: BackendContract | None = None) -> None:
    contract = contract or load_backend_contract()
    problems = tensorrt_llm_config_problems(config, contract, engine_logits_dtype=engine_logits_dtype)
    if problems:
        raise NemoTrtError(
            f"{where} breaks the TensorRT-LLM {contract.version} backend's contract:\n  - " + "\n  - ".join(problems),
            "this is a nemo-trt bug (template or writer): the contract and its upstream sources are in "
            f"configs/trtllm/{contract.version}.yaml (tensorrtllm_backend)")


def validate_reference_config(config: Any, where: str = "tensorrt_llm/config.pbtxt",
                              contract: BackendContract | None = None) -> None:
    """The CPU reference stand-in: same tensors as the backend (later releases' extras allowed); its
    parameters are its own Python model's and are not the backend's to check."""
    contract = contract or load_backend_contract()
    problems = tensor_problems(config, contract, allow_later=True)
    if problems:
        raise NemoTrtError(
            f"{where} (CPU reference backend) does not keep the TensorRT-LLM {contract.version} backend's tensor "
            "contract:\n  - " + "\n  - ".join(problems),
            "this is a nemo-trt bug: model_repository/tensorrt_llm_reference/config.pbtxt must declare the "
            f"backend's tensors as configs/trtllm/{contract.version}.yaml lists them")
