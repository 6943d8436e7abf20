"""A small offline assistant that remembers the conversation across restarts.

    python examples/chat_assistant.py                      # default model, resumes ~/.assistant.session
    python examples/chat_assistant.py --model path/to/model.gguf --backend llamacpp

Run `edgesdk pull smollm2-135m-instruct` once beforehand (the only step that
uses the network). Each answer streams as it is generated; the history and the
KV cache are saved after every answer, so after a reboot the assistant picks
up where it left off without re-reading the conversation.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import edgesdk
from edgesdk import backends
from edgesdk.errors import EdgeSDKError, SessionFileError


def main() -> int:
    parser = argparse.ArgumentParser(description="offline chat assistant")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--backend", default=edgesdk.LoadConfig().backend, choices=backends.choices())
    parser.add_argument("--session", default=str(Path.home() / ".assistant.session"))
    parser.add_argument("--system", default="You are a helpful assistant running on a small device. Answer briefly.")
    args = parser.parse_args()

    model = edgesdk.load(args.model, backend=args.backend)
    session_path = Path(args.session)
    try:
        session = edgesdk.ChatSession.load(session_path, model)
        print(f"(resumed {len(session.history)} messages from {session_path})")
    except SessionFileError as exc:
        if session_path.exists():
            print(f"(starting over: {exc})")
        session = edgesdk.ChatSession(model, system=args.system, temperature=0.3, max_tokens=300)

    print("Ask something (empty line or Ctrl-D to quit).")
    while True:
        try:
            question = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            break
        if not question:
            break
        print("assistant> ", end="", flush=True)
        try:
            for piece in session.send(question, stream=True):
                print(piece, end="", flush=True)
        except EdgeSDKError as exc:
            print(f"\n(error: {exc})")
            continue
        stats = session.last_stats
        print(f"\n({stats.completion_tokens} tokens at {stats.tokens_per_s:.1f} tokens/s)")
        session.save(session_path)
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
