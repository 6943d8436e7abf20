"""The OpenAI HTTP API's bytes: request bodies in, validated requests out; results, chunks and errors back.

Nothing here touches a socket or a model, so the decoder can be fuzzed alone
(the transport is edgesdk/serve/http.py; the wire format, with examples, is
docs/http-api.md).

A request body is strict JSON: an object whose every field we know. A field
we do not implement is accepted only with its neutral value (n = 1,
presence_penalty = 0, logprobs false, ...) so that clients which always send
those keep working; anything else, an unknown field, a wrong type or a value
out of range, is an ApiRequestError naming the field (HTTP 400). A missing
max_tokens gets the server's cap (RequestLimits.max_tokens), a larger one is
refused.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

from ..chat import completion_chunk, completion_result, usage
from ..config import check_limits, limit
from ..errors import ApiRequestError
from ..generation import GenerationStats

MAX_SEED = 2**64 - 1
MAX_TOP_K = 1 << 20
MAX_REPEAT_PENALTY = 100.0
MAX_NAME_CHARS = 256            # model, user: strings we only compare or ignore


@dataclass(frozen=True)
class RequestLimits:
    """What one request may ask for (every default here; `edgesdk serve` has a flag for each)."""
    max_tokens: int = limit(1024, "most tokens one answer may ask for; a request without max_tokens gets this")
    max_prompt_tokens: Optional[int] = limit(None, "most prompt tokens (default: the context less one)")
    max_stop: int = limit(4, "stop strings per request")
    max_stop_chars: int = limit(64, "characters per stop string")
    max_messages: int = limit(256, "messages per chat request")

    def __post_init__(self):
        check_limits(self)


@dataclass(frozen=True)
class CompletionRequest:
    """A validated /v1/chat/completions or /v1/completions request."""
    kind: str                               # "chat" or "text"
    model: str
    stream: bool
    include_usage: bool
    options: Dict[str, Any]                 # GenerationConfig options (max_tokens, stop, seed, sampling)
    messages: Optional[List[Dict[str, str]]] = None     # chat
    prompt: Union[str, List[int], None] = None          # text: a string or token ids


# -- field checks: each takes (name, value) and returns the checked value -------------------------

def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ApiRequestError(f"{name} must be true or false, got {_show(value)}", name)
    return value


def _number(low: float, high: float, low_open: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ApiRequestError(f"{name} must be a number, got {_show(value)}", name)
        if value < low or (low_open and value == low) or value > high:
            bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
            raise ApiRequestError(f"{name} must be in {bound}, got {value}", name)
        return float(value)
    return check


def _integer(low: int, high: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and low <= value <= high:
                return int(value)
            raise ApiRequestError(f"{name} must be an integer, got {_show(value)}", name)
        if not low <= value <= high:
            raise ApiRequestError(f"{name} must be in [{low}, {high}], got {value}", name)
        return value
    return check


def _name(name: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
        raise ApiRequestError(f"{name} must be a string of at most {MAX_NAME_CHARS} characters", name)
    return value


def _only(*neutral: Any) -> Callable[[str, Any], Any]:
    """A field we do not implement: accepted with its neutral value only."""
    def check(name: str, value: Any) -> Any:
        if not any(value == n and type(value) is type(n) for n in neutral):
            allowed = " or ".join(json.dumps(n) for n in neutral)
            raise ApiRequestError(f"{name} is not supported by this server (only {allowed})", name)
        return value
    return check


def _stream_options(name: str, value: Any) -> bool:
    if not isinstance(value, dict):
        raise ApiRequestError(f"{name} must be an object", name)
    unknown = sorted(set(value) - {"include_usage"})
    if unknown:
        raise ApiRequestError(f"unknown field(s) in {name}: {', '.join(unknown)}", f"{name}.{unknown[0]}")
    return _bool(f"{name}.include_usage", value.get("include_usage", False))


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


# Fields of both endpoints; values None mean "not given" (some clients send nulls).
_COMMON = {
    "model": _name,
    "stream": _bool,
    "stream_options": _stream_options,
    "max_tokens": None,                 # checked against the limits
    "stop": None,                       # checked against the limits
    "temperature": _number(0.0, 2.0),
    "top_p": _number(0.0, 1.0, low_open=True),
    "seed": _integer(0, MAX_SEED),
    "top_k": _integer(0, MAX_TOP_K),    # llama.cpp's extensions, as its server takes them
    "min_p": _number(0.0, 1.0),
    "repeat_penalty": _number(0.0, MAX_REPEAT_PENALTY, low_open=True),
    "n": _only(1),
    "presence_penalty": _only(0, 0.0),
    "frequency_penalty": _only(0, 0.0),
    "logit_bias": _only({}),
    "user": _name,
}
_CHAT = dict(_COMMON, messages=None, max_completion_tokens=None, logprobs=_only(False),
             response_format=_only({"type": "text"}))
_TEXT = dict(_COMMON, prompt=None, echo=_only(False), best_of=_only(1), suffix=_only(""), logprobs=_only(0))
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")
_MESSAGE_FIELDS = {"role", "content", "name"}


def decode_json(body: bytes) -> Dict[str, Any]:
    """The body as a JSON object; ApiRequestError for anything else (bad UTF-8, bad JSON, NaN, nesting)."""
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as exc:
        raise ApiRequestError(f"the body is not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ApiRequestError(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ApiRequestError("the body's JSON nests too deeply") from None
    if not isinstance(value, dict):
        raise ApiRequestError(f"the body must be a JSON object, got {type(value).__name__}")
    return value


def _reject_constant(name: str):
    raise ApiRequestError(f"the body holds {name}, which is not JSON")


def parse_request(kind: str, body: Dict[str, Any], limits: RequestLimits) -> CompletionRequest:
    """A chat ("chat") or text ("text") completion request checked field by field."""
    spec = _CHAT if kind == "chat" else _TEXT
    unknown = sorted(set(body) - set(spec))
    if unknown:
        raise ApiRequestError(f"unknown field(s): {', '.join(unknown)}", unknown[0])
    given = {k: v for k, v in body.items() if v is not None}
    checked = {k: spec[k](k, v) for k, v in given.items() if spec[k] is not None}
    if "model" not in checked:
        raise ApiRequestError("model is required", "model")
    options: Dict[str, Any] = {k: checked[k] for k in _SAMPLING if k in checked}
    if "seed" in checked:
        options["seed"] = checked["seed"]
    options["max_tokens"] = _max_tokens(given, limits)
    if "stop" in given:
        options["stop"] = _stop(given["stop"], limits)
    common = dict(kind=kind, model=checked["model"], stream=checked.get("stream", False),
                  include_usage=checked.get("stream_options", False), options=options)
    if "stream_options" in checked and not common["stream"]:
        raise ApiRequestError("stream_options is only allowed with stream: true", "stream_options")
    if kind == "chat":
        return CompletionRequest(messages=_messages(given.get("messages"), limits), **common)
    return CompletionRequest(prompt=_prompt(given.get("prompt")), **common)


def _max_tokens(given: Dict[str, Any], limits: RequestLimits) -> int:
    names = [n for n in ("max_tokens", "max_completion_tokens") if n in given]
    if len(names) == 2:
        raise ApiRequestError("give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    if not names:
        return limits.max_tokens
    return _integer(1, limits.max_tokens)(names[0], given[names[0]])


def _stop(value: Any, limits: RequestLimits) -> List[str]:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiRequestError("stop must be a string or a list of strings", "stop")
    if len(stops) > limits.max_stop:
        raise ApiRequestError(f"stop has {len(stops)} strings; at most {limits.max_stop}", "stop")
    for s in stops:
        if not 1 <= len(s) <= limits.max_stop_chars:
            raise ApiRequestError(f"each stop string must have 1 to {limits.max_stop_chars} characters", "stop")
    return stops


def _messages(value: Any, limits: RequestLimits) -> List[Dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ApiRequestError("messages must be a non-empty list", "messages")
    if len(value) > limits.max_messages:
        raise ApiRequestError(f"messages has {len(value)} entries; at most {limits.max_messages}", "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiRequestError(f"{where} must be an object", where)
        unknown = sorted(set(message) - _MESSAGE_FIELDS)
        if unknown:
            raise ApiRequestError(f"unknown field(s) in {where}: {', '.join(unknown)}", f"{where}.{unknown[0]}")
        out.append({"role": message.get("role"), "content": _content(message.get("content"), where)})
    return out


def _content(value: Any, where: str) -> Any:
    """A message's text: a string, or OpenAI's list of {"type": "text", "text": ...} parts joined."""
    if not isinstance(value, list):
        return value        # validate_messages (edgesdk.templates) names a wrong type
    texts = []
    for part in value:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str) \
                or set(part) != {"type", "text"}:
            raise ApiRequestError(f"{where}.content: only text parts ({{'type': 'text', 'text': ...}}) are supported",
                                  f"{where}.content")
        texts.append(part["text"])
    return "".join(texts)


def _prompt(value: Any) -> Union[str, List[int]]:
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise ApiRequestError("prompt is empty", "prompt")
        return value
    if isinstance(value, list) and value and all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        return value
    raise ApiRequestError("prompt must be a non-empty string or a list of token ids (one prompt per request)",
                          "prompt")


# -- responses ------------------------------------------------------------------------------

def error_body(message: str, kind: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> Dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_type(status: int) -> str:
    return {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error", 415: "invalid_request_error",
            429: "rate_limit_error", 503: "server_error"}.get(status, "server_error" if status >= 500
                                                              else "invalid_request_error")


def sse(data: Union[Dict[str, Any], str]) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode("utf-8") + b"\n\n"


SSE_DONE = sse("[DONE]")


class Answer:
    """The response shapes of one request: the whole result, or its stream of chunks."""

    def __init__(self, request: CompletionRequest, model_name: str):
        self.request = request
        self.model_name = model_name
        if request.kind == "chat":
            self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        else:
            self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def result(self, text: str, stats: GenerationStats) -> Dict[str, Any]:
        if self.request.kind == "chat":
            return completion_result(self.model_name, text, stats, self.id, self.created)
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": stats.finish_reason}],
                "usage": usage(stats)}

    def _chunk(self, text: Optional[str], finish_reason: Optional[str]) -> Dict[str, Any]:
        if self.request.kind == "chat":
            delta = {"role": "assistant"} if text is None and finish_reason is None else \
                ({"content": text} if text is not None else {})
            return completion_chunk(self.model_name, self.id, self.created, delta, finish_reason)
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model_name,
                "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]}

    def first_chunk(self) -> Optional[bytes]:
        """The chat stream's opening chunk (the assistant role); text completions have none."""
        return sse(self._chunk(None, None)) if self.request.kind == "chat" else None

    def piece_chunk(self, text: str) -> bytes:
        return sse(self._chunk(text, None))

    def last_chunks(self, stats: GenerationStats) -> bytes:
        """The finish chunk, the usage chunk when asked for (stream_options.include_usage), and [DONE]."""
        out = sse(self._chunk(None, stats.finish_reason))
        if self.request.include_usage:
            obj = "chat.completion.chunk" if self.request.kind == "chat" else "text_completion"
            out += sse({"id": self.id, "object": obj, "created": self.created, "model": self.model_name,
                        "choices": [], "usage": usage(stats)})
        return out + SSE_DONE


def models_list(model_name: str, created: int) -> Dict[str, Any]:
    return {"object": "list", "data": [model_entry(model_name, created)]}


def model_entry(model_name: str, created: int) -> Dict[str, Any]:
    return {"id": model_name, "object": "model", "created": created, "owned_by": "edgesdk"}


def check_prompt_length(n_ids: int, limit: int, param: str) -> None:
    if n_ids > limit:
        raise ApiRequestError(f"the prompt has {n_ids} tokens; this server takes at most {limit}", param,
                              code="context_length_exceeded")


__all__ = ["Answer", "CompletionRequest", "RequestLimits", "SSE_DONE", "check_prompt_length", "decode_json",
           "error_body", "error_type", "model_entry", "models_list", "parse_request", "sse"]
