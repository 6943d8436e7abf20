"""Time to first token of a chat turn with the KV cache of the history reused, against a cleared cache.

    python benchmarks/bench_chat.py [--model smollm2-135m-instruct] [--backends native,llamacpp] [--threads 2]

The history is a fixed ~400-token conversation (system prompt and three
exchanges). Each repetition first puts exactly that history in the cache,
then asks the next question: once as a ChatSession would (only the new turn
is prefilled), once after Model.reset() (the whole prompt is prefilled).
Both are measured in the same run, alternating, and the medians compared.
Target: reuse / cleared < 0.2. Every backend named is measured in the same
run, so the last line compares them (first backend / llama.cpp).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import edgesdk  # noqa: E402
from edgesdk.chat import ChatSession  # noqa: E402

SYSTEM = "You are a patient assistant who explains things clearly and briefly."
HISTORY = [
    ("user", "I am planning a vegetable garden on a small balcony that gets about five hours of direct sun "
             "in the afternoon. Which vegetables would grow well there, and what kind of containers should I use?"),
    ("assistant", "Five hours of afternoon sun suits many compact crops. Good choices are cherry tomatoes, bush "
                  "beans, lettuce, spinach, radishes, chard, peppers and herbs such as basil, parsley and chives. "
                  "Use containers at least 30 cm deep for tomatoes and peppers, 15 to 20 cm for salad greens and "
                  "radishes. Make sure every pot has drainage holes, use a light potting mix rather than garden "
                  "soil, and group the pots so they shade each other's roots on hot days."),
    ("user", "How often should I water them in summer, and is there a way to avoid watering every single day "
             "when I travel for a long weekend?"),
    ("assistant", "In summer most balcony containers need water once a day, small pots sometimes twice. Water "
                  "deeply in the morning until it drains out of the bottom. For a long weekend you can use "
                  "self-watering pots with a reservoir, water spikes connected to bottles, or a simple wick "
                  "system: a cotton rope from a bucket of water into each pot. Moving the pots together into "
                  "partial shade and adding a layer of mulch also slows down drying a lot."),
    ("user", "Which of these vegetables can I sow directly in the pots, and which are better bought as young "
             "plants from a nursery?"),
    ("assistant", "Sow beans, radishes, lettuce, spinach and chard directly; they germinate quickly and dislike "
                  "being moved. Tomatoes and peppers need a long warm start, so buy them as young plants unless "
                  "you can start seeds indoors eight weeks before the last frost. Basil can go either way; "
                  "parsley is slow to germinate, so young plants save you several weeks."),
]
NEXT_QUESTION = "Great, and what should I feed them?"


def measure(name: str, args) -> dict:
    model = edgesdk.load(args.model, backend=name, n_ctx=args.n_ctx, threads=args.threads)
    history = [{"role": role, "content": content} for role, content in HISTORY]
    base_messages = [{"role": "system", "content": SYSTEM}] + history
    base_ids = model.chat_formatter.encode(base_messages, add_generation_prompt=False)

    def ask(reuse: bool) -> tuple:
        # The state after the last answer: exactly the history in the cache.
        model.reset()
        model.generate(base_ids, max_tokens=1, temperature=0)   # prefills base_ids; the one sampled id is not evaluated
        if not reuse:
            model.reset()
        session = ChatSession(model, system=SYSTEM, temperature=0, max_tokens=1)
        session.history = [dict(m) for m in history]
        session.send(NEXT_QUESTION)
        stats = session.last_stats
        return stats.time_to_first_token_s or stats.total_s, stats.prompt_tokens, stats.reused_tokens

    ask(True)                                  # warm-up: page in the weights
    reuse_s, cold_s = [], []
    for _ in range(args.repeats):
        t, prompt_tokens, reused = ask(True)
        reuse_s.append(t)
        t, _, cold_reused = ask(False)
        cold_s.append(t)
    reuse_med, cold_med = statistics.median(reuse_s), statistics.median(cold_s)
    info = model.backend.info()
    print(f"{info.name} ({info.device}) · history {len(base_ids)} tokens · turn prompt {prompt_tokens} tokens "
          f"({reused} reused, {prompt_tokens - reused} prefilled with reuse; {cold_reused} reused when cleared)")
    print(f"  time to first token, median of {args.repeats}: reuse {reuse_med * 1000:.1f} ms, "
          f"cleared {cold_med * 1000:.1f} ms, ratio reuse/cleared {reuse_med / cold_med:.3f} (target < 0.2)")
    model.close()
    return {"reuse": reuse_med, "cleared": cold_med}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--backends", default="native,llamacpp", help="comma-separated backends to measure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cpus · model {args.model} "
          f"· {args.threads} threads")
    results = {name: measure(name, args) for name in args.backends.split(",") if name}
    first = next(iter(results))
    if first != "llamacpp" and "llamacpp" in results:
        for key in ("reuse", "cleared"):
            print(f"{first}/llama.cpp time to first token ({key}): "
                  f"{results[first][key] / results['llamacpp'][key]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
