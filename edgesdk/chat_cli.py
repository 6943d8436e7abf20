"""`edgesdk chat` and `edgesdk run`: the terminal faces of edgesdk.chat (parsing and printing only).

chat: an interactive conversation that streams tokens, shows tokens/s after
each answer, keeps history, and takes /commands; Ctrl-C stops the current
answer (what was said so far stays in the history), Ctrl-D or /quit exits.
run: one answer to one prompt, streamed to stdout, or a JSON completion.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

from .config import KV_CACHE_TYPES, LoadConfig
from .errors import EdgeSDKError
from .generation import GenerationConfig

HELP = """commands:
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt and start over
  /save PATH     save the conversation and its KV cache
  /load PATH     resume a saved conversation
  /help          this help
  /quit          leave (Ctrl-D works too); Ctrl-C stops an answer"""


def add_load_options(p: argparse.ArgumentParser) -> None:
    """--backend, --n-ctx, --threads, --kv-type, --max-memory: LoadConfig's fields, its defaults."""
    from . import backends

    d = LoadConfig()
    p.add_argument("--backend", default=d.backend, choices=backends.choices(),
                   help="inference backend (auto: the first that can run the model here)")
    p.add_argument("--n-ctx", type=int, default=d.n_ctx, help="context size in tokens (default: the memory plan's)")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads (default: this device's choice)")
    p.add_argument("--kv-type", default=d.kv_type, choices=KV_CACHE_TYPES, help="KV cache element type")
    p.add_argument("--max-memory", default=d.max_memory,
                   help="memory budget such as 1.5GB or 800MiB (default: what is free)")
    p.add_argument("--workers", default="", metavar="HOST:PORT,...",
                   help="`edgesdk worker`s to hold the model's layers, split by the memory each offers "
                        "(llamacpp backend; see docs/workers.md)")


def load_config(args: argparse.Namespace) -> LoadConfig:
    workers = tuple(w.strip() for w in args.workers.split(",") if w.strip())
    return LoadConfig(backend=args.backend, n_ctx=args.n_ctx, threads=args.threads, kv_type=args.kv_type,
                      max_memory=args.max_memory, workers=workers)


def _add_generation_options(p: argparse.ArgumentParser) -> None:
    """Sampling flags; None (the default) leaves the model's own default: the registry's recommendation
    for a registry model, else GenerationConfig's."""
    d = GenerationConfig()
    s = d.sampling

    def default(value) -> str:
        return f"(default: the model's, else {value})"

    p.add_argument("--temperature", type=float, default=None, help=default(s.temperature))
    p.add_argument("--top-k", type=int, default=None, help=default(s.top_k) + "; 0 keeps all")
    p.add_argument("--top-p", type=float, default=None, help=default(s.top_p))
    p.add_argument("--min-p", type=float, default=None, help=default(s.min_p))
    p.add_argument("--repeat-penalty", type=float, default=None, help=default(s.repeat_penalty))
    p.add_argument("--max-tokens", type=int, default=None, help="longest answer in tokens " + default(d.max_tokens))
    p.add_argument("--seed", type=int, default=None)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    add_load_options(p)
    _add_generation_options(p)


def add_chat_commands(sub) -> None:
    """Register `chat` and `run` on the CLI's subparsers."""
    p = sub.add_parser("chat", help="chat with a model in the terminal (pulls the default model on first use; "
                                    "other models: edgesdk pull MODEL first)")
    p.add_argument("model", nargs="?", default=None, help="registry name or .gguf path (default: the registry's)")
    p.add_argument("--system", default=None, help="system prompt")
    _add_model_options(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("run", help="answer one prompt, streamed to stdout")
    p.add_argument("model", help="registry name (pulled already: edgesdk pull MODEL) or .gguf path")
    p.add_argument("prompt")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--json", action="store_true", help="print an OpenAI-shaped chat completion as JSON")
    _add_model_options(p)
    p.set_defaults(func=cmd_run)


def _sampling(args: argparse.Namespace) -> dict:
    """The generation options given on the command line (the others keep the model's defaults)."""
    given = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                 repeat_penalty=args.repeat_penalty, max_tokens=args.max_tokens, seed=args.seed)
    return {name: value for name, value in given.items() if value is not None}


def _open_model(name: Optional[str], args: argparse.Namespace):
    """Load the named model, or the registry's default, pulling only the default (and saying so)."""
    from . import registry
    from .cli import MIB, PullPrinter
    from .model import load

    if name is None:
        name = registry.default_model()
        if registry.cached_path(name) is None:
            size = registry.entry(name).size
            print(f"{name} (the default model, {size / MIB:.1f} MiB) is not downloaded yet: pulling it once",
                  file=sys.stderr)
            with PullPrinter(sys.stderr) as printer:
                registry.pull(name, progress=printer)
    # Any other registry model must be pulled first: load() says so (no network here).
    model = load(name, load_config(args))
    _note_base_model(model)
    return model


def _note_base_model(model) -> None:
    """One line on stderr when the registry marks the model as a base model (completion, not chat)."""
    from . import registry

    entry = registry.entry_for_file(model.path)
    if entry is None or entry.chat:
        return
    entries = registry.load_registry()
    suggestion = next((n for n in (registry.default_model(), *entries) if entries[n].chat), None)
    hint = f"; for chat try: edgesdk chat {suggestion}" if suggestion else ""
    print(f"note: {entry.name} is a base model: it continues text (completion), it was not trained to chat"
          f"{hint}", file=sys.stderr)


def _banner(model) -> List[str]:
    """What the chat runs, in short lines: the model and its file; backend, device, context and memory."""
    from .cli import MIB

    file_text = f"{model.path.stat().st_size / MIB:.1f} MiB"
    if model.name != str(model.path):
        file_text = f"{model.path.name}, {file_text}"
    info = model.backend.info()
    run = f"{info.name} on {info.device} · context {model.n_ctx} tokens"
    plan = model.memory_plan
    if plan is not None:
        run += f" · needs {plan.total / MIB:,.0f} MiB" + (f" of {plan.budget / MIB:,.0f} MiB available"
                                                           if plan.budget is not None else "")
    return [f"{model.name} ({file_text})", run, "type a message, /help for commands, Ctrl-D to leave"]


def _stream_answer(session, text: str) -> None:
    # Ctrl-C sets an event the generation checks between steps, rather than raising
    # KeyboardInterrupt wherever the main thread happens to be: an exception raised inside
    # a native library's callback into Python is printed and dropped, and the answer would
    # run on. Checked between steps, it stops every backend within one step.
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    pieces = None
    try:
        pieces = session.send(text, stream=True, cancel=cancel)
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        signal.signal(signal.SIGINT, previous)
        if pieces is not None:
            pieces.close()     # records what was said so far in the history
    stats = session.last_stats
    if stats.finish_reason == "cancelled":
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    print(f"[{stats.completion_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, "
          f"first token after {stats.time_to_first_token_s:.2f} s, {stats.reused_tokens} prompt tokens reused]")
    sys.stdout.flush()


def _command(session, line: str):
    """Run a /command; returns the (possibly new) session, or None to quit."""
    from .chat import ChatSession

    name, _, rest = line.partition(" ")
    rest = rest.strip()
    if name in ("/quit", "/exit"):
        return None
    if name == "/help":
        print(HELP)
    elif name == "/reset":
        session.reset()
        print("[conversation cleared]")
    elif name == "/system":
        if not rest:
            print(f"[system prompt: {session.system!r}]" if session.system else "[no system prompt]")
        else:
            session.reset(system=rest)
            print("[system prompt set; conversation cleared]")
    elif name == "/save":
        if not rest:
            print("usage: /save PATH")
        else:
            session.save(Path(rest).expanduser())
            print(f"[saved {len(session.history)} messages to {rest}]")
    elif name == "/load":
        if not rest:
            print("usage: /load PATH")
        else:
            loaded = ChatSession.load(Path(rest).expanduser(), session.model)
            print(f"[loaded {len(loaded.history)} messages from {rest}]")
            return loaded
    else:
        print(f"unknown command {name}; /help lists them")
    return session


def _enable_readline() -> None:
    try:
        import atexit
        import readline
    except ImportError:       # no readline on this Python: plain input() still works
        return
    from . import registry

    # EDGESDK_CHAT_HISTORY moves the readline history alone (tests, read-only homes).
    history = Path(os.environ.get("EDGESDK_CHAT_HISTORY") or registry.home() / "chat_history")
    try:
        readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save_history():
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(history)
        except OSError:
            pass
    atexit.register(save_history)


def cmd_chat(args: argparse.Namespace) -> int:
    from .chat import ChatSession

    model = _open_model(args.model, args)
    print("\n".join(_banner(model)))
    session = ChatSession(model, system=args.system, **_sampling(args))
    if sys.stdin.isatty():
        _enable_readline()
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                session = _command(session, line)
                if session is None:
                    return 0
                continue
            _stream_answer(session, line)
        except (EdgeSDKError, OSError) as exc:   # the chat goes on; the conversation is kept
            print(f"error: {exc}")
        except KeyboardInterrupt:
            print(" [stopped]")


def cmd_run(args: argparse.Namespace) -> int:
    model = _open_model(args.model, args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": args.prompt}]
    # Given an event (never set), the prompt runs on a helper thread: Ctrl-C's KeyboardInterrupt
    # reaches this thread at once and aborts the engine within one layer, not one batch.
    cancel = threading.Event()
    if args.json:
        print(json.dumps(model.chat(messages, cancel=cancel, **_sampling(args)), ensure_ascii=False))
        return 0
    for chunk in model.chat(messages, stream=True, cancel=cancel, **_sampling(args)):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


__all__ = ["add_chat_commands", "cmd_chat", "cmd_run"]
