"""Fuzz target: the HTTP API's request decoder, edgesdk.serve.openai_api.decode_json + parse_request.

The input's first byte picks the endpoint (even: chat, odd: text completion); the rest is the body.
Only ApiRequestError may come out, and a request it accepts must be one the generation settings
accept too (its options make a GenerationConfig): anything else is a finding.
"""
from __future__ import annotations

import _fuzz

with _fuzz.instrumented("edgesdk.serve.openai_api"):
    from edgesdk.errors import ApiRequestError
    from edgesdk.generation import GenerationConfig
    from edgesdk.serve.openai_api import RequestLimits, decode_json, parse_request

LIMITS = RequestLimits()


def one_input(data: bytes) -> None:
    kind = "text" if data[:1] and data[0] & 1 else "chat"
    try:
        request = parse_request(kind, decode_json(data[1:]), LIMITS)
    except ApiRequestError:
        return
    config = GenerationConfig().with_options(**request.options)
    assert 1 <= config.max_tokens <= LIMITS.max_tokens
    assert len(config.stop) <= LIMITS.max_stop
    assert (request.messages is not None) == (kind == "chat")


if __name__ == "__main__":
    _fuzz.main(one_input)
