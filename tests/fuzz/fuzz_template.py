"""Fuzz target: the chat-template sandbox, ChatTemplate(source).render_text / render.

The input is a template source, then up to three message contents, separated by NUL bytes (all read as
UTF-8, invalid bytes becoming U+FFFD). Only TemplateError and ChatFormatError may come out; anything
else is a finding, and so is a render that outlasts libFuzzer's -timeout or grows past -rss_limit_mb
(the sandbox promises RENDER_TIME_LIMIT_S and MAX_RENDER_WORK_BYTES).
"""
from __future__ import annotations

import _fuzz

with _fuzz.instrumented("edgesdk.templates", "edgesdk.template_sandbox", "jinja2"):
    from edgesdk.errors import ChatFormatError, TemplateError
    from edgesdk.templates import ChatTemplate, validate_messages

ROLES = ("system", "user", "assistant", "user")


def one_input(data: bytes) -> None:
    source, *contents = data.decode("utf-8", errors="replace").split("\0", 4)[:4]
    messages = [{"role": ROLES[i], "content": c} for i, c in enumerate(contents)] or [{"role": "user", "content": "hi"}]
    try:
        messages = validate_messages(messages)
        template = ChatTemplate(source, "<s>", "</s>")
        template.render_text(messages)
        template.render(messages, add_generation_prompt=False)
    except (TemplateError, ChatFormatError):
        pass


if __name__ == "__main__":
    _fuzz.main(one_input)
