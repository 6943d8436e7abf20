"""`edgesdk serve`: the terminal face of edgesdk.serve.http (argument parsing and printing only).

    edgesdk serve [MODEL] [--host 127.0.0.1] [--port 8080] [--parallel N] [--api-key-file FILE]

Serves the model over the OpenAI API until Ctrl-C or SIGTERM. Binding any
address but a loopback one needs an API key: from --api-key-file, the
EDGESDK_API_KEY environment variable, or --api-key (visible to every user
of this machine in the process list). Every limit of ServerSettings and
RequestLimits is a flag with its default. The API is docs/http-api.md.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import fields
from typing import Optional

API_KEY_ENV = "EDGESDK_API_KEY"
DEFAULT_PARALLEL = 4    # sequences answered at once (LoadConfig.n_seq); each holds n_ctx tokens of KV cache


def _limit_fields(record_type):
    return [f for f in fields(record_type) if "help" in f.metadata]


def add_serve_command(sub) -> None:
    """Register `serve` on the CLI's subparsers."""
    from .chat_cli import add_load_options
    from .serve.openai_api import RequestLimits
    from .serve.settings import ServerSettings

    d = ServerSettings()
    p = sub.add_parser("serve", help="serve a model over the OpenAI HTTP API to many clients at once",
                       description="An OpenAI-compatible server (/v1/chat/completions, /v1/completions, "
                                   "/v1/models, /health, /metrics) that batches concurrent requests. It binds "
                                   "127.0.0.1 unless told otherwise; any other address needs an API key.")
    p.add_argument("model", nargs="?", default=None,
                   help="registry name (pulled already: edgesdk pull MODEL) or .gguf path (default: the registry's)")
    p.add_argument("--host", default=d.host, help="address to bind (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=d.port, help="(default %(default)s)")
    p.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                   help="requests answered at once, each with its own context (default %(default)s)")
    p.add_argument("--api-key-file", default=None, help="file holding the API key clients must send as Bearer")
    p.add_argument("--api-key", default=None,
                   help=f"the API key itself (prefer --api-key-file or ${API_KEY_ENV}: others can read arguments)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name clients use to reach this server, beyond localhost and this machine's name "
                        "(repeat for more)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (https://app.example) whose pages may call the server (repeat for more)")
    p.add_argument("--log-prompts", action="store_true", help="log prompt text (off: only sizes and times)")
    p.add_argument("--quiet", action="store_true", help="log only warnings and errors")
    limits = p.add_argument_group("limits")
    for f in _limit_fields(ServerSettings) + _limit_fields(RequestLimits):
        kind = float if f.type in ("float", float) else int
        default = "%(default)s" if f.default is not None else "none"
        limits.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                            help=f"{f.metadata['help']} (default {default})")
    add_load_options(p)
    p.set_defaults(func=cmd_serve)


def _api_key(args: argparse.Namespace) -> Optional[str]:
    from .errors import InvalidArgumentError

    given = [name for name, value in (("--api-key-file", args.api_key_file), ("--api-key", args.api_key),
                                      (f"${API_KEY_ENV}", os.environ.get(API_KEY_ENV))) if value]
    if len(given) > 1:
        raise InvalidArgumentError(f"give the API key one way, not {' and '.join(given)}")
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                return f.read(4096).strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidArgumentError(f"cannot read the API key file {args.api_key_file}: {exc}") from None
    return args.api_key or os.environ.get(API_KEY_ENV) or None


def cmd_serve(args: argparse.Namespace) -> int:
    from . import registry
    from .chat_cli import load_config
    from .config import check_positive_int
    from .errors import ModelNotFoundError
    from .model import load
    from .serve.http import OpenAIServer, ServerSettings
    from .serial_cli import _stop_on_sigterm
    from .serve.openai_api import RequestLimits

    # Settings first: a mistake fails before the socket is bound or the model read.
    limits = RequestLimits(**{f.name: getattr(args, f.name) for f in _limit_fields(RequestLimits)})
    settings = ServerSettings(host=args.host, port=args.port, api_key=_api_key(args),
                              allowed_hosts=tuple(args.allowed_host), cors_origins=tuple(args.cors_origin),
                              log_prompts=args.log_prompts, limits=limits,
                              **{f.name: getattr(args, f.name) for f in _limit_fields(ServerSettings)})
    config = load_config(args).with_(n_seq=check_positive_int("--parallel", args.parallel))
    name = args.model or registry.default_model()
    if name in registry.load_registry() and registry.cached_path(name) is None:
        raise ModelNotFoundError(f"{name} is not downloaded: run `edgesdk pull {name}` first (the server "
                                 "never downloads)")

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
    for logger_name in ("edgesdk", "uvicorn"):
        logger = logging.getLogger(logger_name)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    server = OpenAIServer(settings, load=lambda: load(name, config), model_name=os.path.basename(name)
                          if name.endswith(".gguf") else name)
    key_note = "API key required" if settings.api_key else "no API key (loopback only)"
    print(f"edgesdk: serving {name} on http://{settings.host}:{settings.port}/v1 ({args.parallel} at once, "
          f"{key_note}); loading the model, /health says when it is ready; Ctrl-C stops", file=sys.stderr,
          flush=True)
    # uvicorn stops on SIGINT and SIGTERM, then raises the signal again with the handlers it found:
    # ours turns SIGTERM into the KeyboardInterrupt of Ctrl-C, and both are a normal stop.
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.run()
    except KeyboardInterrupt:
        print("edgesdk: stopped", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if server.load_error is not None:
        print(f"edgesdk: error: the model did not load: {server.load_error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["add_serve_command", "cmd_serve", "API_KEY_ENV", "DEFAULT_PARALLEL"]
