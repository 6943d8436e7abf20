"""Tokenizer speed: tokens per second encoding 1 MB of mixed text, against llama.cpp in the same run.

    python benchmarks/bench_tokenizer.py [--mb 1] [--repeats 5] [--models smollm2-135m-instruct gemma3-270m]

For each model: llama.cpp's tokenizer (llama-cpp-python, vocab_only) and ours,
cold (word cache emptied before every run: the first time a text is seen) and
warm (the same text again). Medians of --repeats runs; the ratio is ours / llama.cpp
tokens per second. The ids are checked to be identical before anything is timed.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgesdk import registry  # noqa: E402
from edgesdk.tokenizer import Tokenizer  # noqa: E402

PROSE = ("The committee met on Tuesday to discuss the budget. After a long debate, members agreed "
         "that the library's opening hours would be extended, and that 3,250 new books would be bought. ")
MULTILINGUAL = ("Le cœur a ses raisons. Über den Wolken. ¿Dónde está? Привет, как дела? 你好，世界！"
                "日本語のテキスト。안녕하세요. مرحبا بالعالم. नमस्ते दुनिया. ")
EMOJI = "Great job 👍🏽🎉 — family 👨\u200d👩\u200d👧 on 🇫🇷 holiday 😀! "


def mixed_text(n_bytes: int, seed: int = 7) -> str:
    """Prose, this repository's Python source, several scripts, emoji and numbers, shuffled by paragraph."""
    rng = random.Random(seed)
    code = Path(__file__).resolve().parents[1].joinpath("edgesdk", "gguf.py").read_text(encoding="utf-8")
    code_blocks = code.split("\n\n")
    parts = []
    size = 0
    while size < n_bytes:
        kind = rng.random()
        if kind < 0.4:
            words = PROSE.split()
            rng.shuffle(words)
            piece = " ".join(words) + "\n\n"
        elif kind < 0.7:
            piece = rng.choice(code_blocks) + "\n\n"
        elif kind < 0.85:
            piece = MULTILINGUAL + "\n"
        elif kind < 0.95:
            piece = EMOJI + "\n"
        else:
            piece = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(12)) + "\n"
        parts.append(piece)
        size += len(piece.encode("utf-8"))
    return "".join(parts).encode("utf-8")[:n_bytes].decode("utf-8", errors="ignore")


def median_seconds(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0, help="megabytes of text (default 1)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    args = parser.parse_args()

    import llama_cpp

    text = mixed_text(int(args.mb * 1_000_000))
    data = text.encode("utf-8")
    print(f"text: {len(data)} bytes, {len(text)} characters; median of {args.repeats} runs")
    print(f"{'model':24} {'tokens':>8} {'llama.cpp tok/s':>16} {'ours cold tok/s':>16} {'ratio':>6} "
          f"{'ours warm tok/s':>16} {'ratio':>6}")
    for name in args.models:
        path = registry.pull(name)
        reference = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        tokenizer = Tokenizer.from_gguf(path)
        theirs = reference.tokenize(data, add_bos=False, special=False)
        ours = tokenizer.encode(text, add_special=False)
        if ours != theirs:
            print(f"{name}: ids differ from llama.cpp ({len(ours)} vs {len(theirs)} tokens); not timing")
            return 1
        n_tokens = len(ours)
        t_ref = median_seconds(lambda: reference.tokenize(data, add_bos=False, special=False), args.repeats)
        model = tokenizer._model
        t_cold = median_seconds(lambda: tokenizer.encode(text, add_special=False), args.repeats,
                                before=model.encode_word.cache_clear)
        t_warm = median_seconds(lambda: tokenizer.encode(text, add_special=False), args.repeats)
        ref_rate, cold_rate, warm_rate = n_tokens / t_ref, n_tokens / t_cold, n_tokens / t_warm
        print(f"{name:24} {n_tokens:8d} {ref_rate:16,.0f} {cold_rate:16,.0f} {cold_rate / ref_rate:6.2f} "
              f"{warm_rate:16,.0f} {warm_rate / ref_rate:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
