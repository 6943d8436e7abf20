"""Child process for tests/test_template_sandbox.py: renders hostile chat templates under a memory cap.

    python tests/template_bomb_child.py

Reads one JSON object per line on stdin, {"source": ..., "messages": [...]},
compiles and renders it with edgesdk.templates.ChatTemplate, and answers one
JSON line: {"outcome": "rendered" | exception class name, "message",
"seconds", "rss_growth"} where rss_growth is the peak resident memory the
compile and render added, in bytes (VmHWM after, minus VmRSS before, with the
peak reset through /proc/self/clear_refs before each request).

Before the first request it caps its address space (RLIMIT_AS) at what it
maps now plus ADDRESS_SPACE_HEADROOM, so that a template the sandbox fails to
bound ends in a MemoryError here instead of taking the machine's memory; and
it lifts Python's limit on int <-> str conversion digits, as an application
may, so that the sandbox is shown not to rely on it.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edgesdk.templates import ChatTemplate  # noqa: E402

ADDRESS_SPACE_HEADROOM = 512 << 20   # far above any bounded render, far below the test machine's memory
DEFAULT_MESSAGES = [{"role": "user", "content": "hi"}]


def status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} missing from /proc/self/status")


def reset_peak_rss() -> None:
    # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def render(request: dict) -> dict:
    reset_peak_rss()
    before = status_bytes("VmRSS")
    started = time.monotonic()
    outcome, message = "rendered", ""
    try:
        text = ChatTemplate(request["source"]).render_text(request.get("messages") or DEFAULT_MESSAGES)
        message = f"{len(text)} characters"
    except BaseException as exc:  # noqa: BLE001 - the parent judges every outcome
        outcome, message = type(exc).__name__, str(exc)[:2000]
    seconds = time.monotonic() - started
    return {"outcome": outcome, "message": message, "seconds": seconds,
            "rss_growth": status_bytes("VmHWM") - before}


def main() -> None:
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)
    # Warm the imports a render pulls in, so they do not count as the first template's growth.
    ChatTemplate("{{ messages | tojson }}{{ 'a' ~ 1 }}").render_text(DEFAULT_MESSAGES)
    limit = status_bytes("VmSize") + ADDRESS_SPACE_HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for line in sys.stdin:
        print(json.dumps(render(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
