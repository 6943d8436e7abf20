"""Stream a completion and a chat answer from a local model, printing tokens as they arrive.

    python examples/stream_generate.py "The three laws of robotics are"
    python examples/stream_generate.py --backend llamacpp --seed 7 "Write a haiku about the sea"

Shows the two generation APIs: `model.generate` continues raw text (here with
a stop string), `model.chat` answers OpenAI-style messages and returns
OpenAI-shaped chunks when streaming.
"""
from __future__ import annotations

import argparse
import sys
import time

import edgesdk
from edgesdk import backends


def main() -> int:
    parser = argparse.ArgumentParser(description="stream text from a local model")
    parser.add_argument("prompt", nargs="?", default="The three most useful things to know about batteries are")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--backend", default=edgesdk.LoadConfig().backend, choices=backends.choices())
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=80)
    args = parser.parse_args()

    with edgesdk.load(args.model, backend=args.backend) as model:
        print(f"# {model!r}\n# completion (stops at a blank line):")
        started = time.perf_counter()
        print(args.prompt, end="", flush=True)
        for piece in model.generate(args.prompt, max_tokens=args.max_tokens, temperature=0.7, seed=args.seed,
                                    stop=["\n\n"], stream=True):
            print(piece, end="", flush=True)
        stats = model.last_stats
        print(f"\n# {stats.completion_tokens} tokens in {time.perf_counter() - started:.2f} s, "
              f"finish: {stats.finish_reason}\n# chat:")
        messages = [{"role": "user", "content": args.prompt}]
        for chunk in model.chat(messages, stream=True, max_tokens=args.max_tokens, seed=args.seed):
            delta = chunk["choices"][0]["delta"]
            print(delta.get("content", ""), end="", flush=True)
            if chunk["choices"][0]["finish_reason"]:
                print(f"\n# finish: {chunk['choices'][0]['finish_reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
