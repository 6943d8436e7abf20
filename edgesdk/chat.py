"""Conversations: OpenAI-shaped chat completions and ChatSession, which remembers and resumes.

`chat_completion(model, messages)` renders the messages with the model's chat
template (edgesdk.templates), generates, and returns a dict shaped like an
OpenAI chat completion, or an iterator of "chat.completion.chunk" dicts.

A `ChatSession` keeps the history. Every turn renders the whole conversation,
and the model evaluates only the ids after the longest prefix its KV cache
already holds, so a turn prefills just the new user message (plus the few
template tokens around it).

Context overflow policy: when the rendered conversation plus room for the
answer (`reserve` tokens, default min(max_tokens, n_ctx // 4)) does not fit
n_ctx, the oldest turns are dropped, a user message together with the replies
that follow it, until it fits. The system prompt always stays. Because the
conversation's beginning changed, the cache is rebuilt once (from the end of
the system prompt on); later turns reuse it again. If even the system prompt
and the new message do not fit, ContextOverflowError is raised and the history
is left as it was.

Sessions are saved as one file: magic, a JSON header (model identity, history,
the ids in the cache), the backend's KV cache blob, and a sha256 of everything
before it. It is written to a temporary file in the same directory and moved
into place with os.replace, so a crash never leaves a half-written session.
Loading checks length, checksum and model identity (sha256 of the GGUF header,
backend name, n_ctx, KV type) before anything is changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Union

from .errors import ContextOverflowError, InvalidArgumentError, SessionFileError
from .generation import GenerationConfig, GenerationStats
from .templates import validate_messages

if TYPE_CHECKING:          # chat sits above Model and uses only its public API
    from .model import Model

SESSION_MAGIC = b"EDGESDK-SESSION\x00"
SESSION_VERSION = 1


def usage(stats: GenerationStats) -> dict:
    """OpenAI's usage record of one answer."""
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}


def completion_result(model_name: str, content: str, stats: GenerationStats, completion_id: str,
                      created: int) -> dict:
    """A whole answer as an OpenAI chat.completion."""
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": stats.finish_reason}],
        "usage": usage(stats),
    }


def completion_chunk(model_name: str, completion_id: str, created: int, delta: dict,
                     finish_reason: Optional[str]) -> dict:
    """One OpenAI chat.completion.chunk: the first has delta {"role"}, then {"content"}, the last {} and why."""
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}


def new_completion_id() -> "tuple[str, int]":
    """(id, created) of a new chat completion."""
    return f"chatcmpl-{uuid.uuid4().hex}", int(time.time())


def _chunks(model: "Model", pieces: Iterator[str], stats: GenerationStats, completion_id: str,
            created: int) -> Iterator[dict]:
    yield completion_chunk(model.name, completion_id, created, {"role": "assistant"}, None)
    for piece in pieces:
        yield completion_chunk(model.name, completion_id, created, {"content": piece}, None)
    yield completion_chunk(model.name, completion_id, created, {}, stats.finish_reason)


def chat_prompt_ids(model: "Model", messages) -> List[int]:
    """The prompt ids of OpenAI-style messages in the model's chat template, ready for the answer."""
    return model.chat_formatter.encode(validate_messages(messages), add_generation_prompt=True)


def chat_completion(model: "Model", messages, stream: bool = False, cancel=None,
                    **options) -> Union[dict, Iterator[dict]]:
    """Answer OpenAI-style messages; a chat.completion dict, or chat.completion.chunk dicts when stream.
    options are GenerationConfig's (edgesdk.generation); the ones left out take the model's defaults."""
    config = model.generation.with_options(**options)
    ids = chat_prompt_ids(model, messages)
    stats = GenerationStats()
    pieces = model.stream_ids(ids, config, stats=stats, cancel=cancel)
    completion_id, created = new_completion_id()
    if stream:
        return _chunks(model, pieces, stats, completion_id, created)
    return completion_result(model.name, "".join(pieces), stats, completion_id, created)


class ChatSession:
    """A conversation with a model that reuses the KV cache between turns (see the module docstring)."""

    def __init__(self, model: "Model", system: Optional[str] = None, reserve: Optional[int] = None, **options):
        if system is not None and not isinstance(system, str):
            raise InvalidArgumentError(f"system must be a string, got {type(system).__name__}")
        if reserve is not None and (isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0):
            raise InvalidArgumentError(f"reserve must be a non-negative int or None, got {reserve!r}")
        self.model = model
        self.system = system
        self.options = dict(options)            # what the session was asked for (saved with it)
        self.config: GenerationConfig = model.generation.with_options(**options)   # validated now
        self.reserve = reserve
        self.history: List[Dict[str, str]] = []  # user/assistant turns, oldest first, system not included
        self.last_stats = GenerationStats()
        self.dropped_turns = 0                   # turns removed by the overflow policy so far

    # -- conversation -----------------------------------------------------------------------

    @property
    def messages(self) -> List[Dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.history]

    def reset(self, system: Optional[str] = None) -> None:
        """Forget the turns (and set a new system prompt if given); the cache is reused where it matches."""
        self.history = []
        if system is not None:
            self.system = system or None

    def _fit(self, history: List[Dict[str, str]], max_tokens: int) -> "tuple[List[Dict[str, str]], List[int]]":
        """The history (oldest turns dropped as needed) and its prompt ids, fitting with room to answer."""
        reserve = self.reserve if self.reserve is not None else min(max_tokens, self.model.n_ctx // 4)
        budget = self.model.n_ctx - max(reserve, 1)
        head = [{"role": "system", "content": self.system}] if self.system else []
        formatter = self.model.chat_formatter
        while True:
            ids = formatter.encode(head + history, add_generation_prompt=True)
            if len(ids) <= budget:
                return history, ids
            # Drop the oldest user turn and every reply up to the next user turn.
            users = [i for i, m in enumerate(history) if m["role"] == "user"]
            if len(users) < 2:
                raise ContextOverflowError(
                    f"the system prompt and the new message take {len(ids)} tokens; with {reserve} reserved for "
                    f"the answer the context of {self.model.n_ctx} cannot hold them"
                )
            history = history[users[1]:]

    def send(self, text: str, stream: bool = False, cancel=None) -> Union[str, Iterator[str]]:
        """Add a user turn and answer it: the reply text, or an iterator of its pieces when stream.

        The reply is recorded in the history when the answer finishes (or the
        iterator is closed early, or `cancel` is set: what was produced is kept).
        """
        if not isinstance(text, str) or not text:
            raise InvalidArgumentError("the message must be a non-empty string")
        candidate = self.history + [{"role": "user", "content": text}]
        validate_messages(candidate)
        fitted, ids = self._fit(candidate, self.config.max_tokens)
        stats = GenerationStats()
        pieces = self.model.stream_ids(ids, self.config, stats=stats, cancel=cancel)
        before = (self.history, self.dropped_turns)
        self.dropped_turns += sum(1 for m in candidate[:len(candidate) - len(fitted)] if m["role"] == "user")
        self.history = fitted
        self.last_stats = stats
        turn = self._turn(pieces, stats, before)
        if stream:
            return turn
        return "".join(turn)

    def _turn(self, pieces: Iterator[str], stats: GenerationStats, before) -> Iterator[str]:
        produced: List[str] = []
        try:
            for piece in pieces:
                produced.append(piece)
                yield piece
        finally:
            if stats.finish_reason == "cancelled" and not produced:
                # Stopped before a word of the answer (in a long prompt): the message was never
                # answered, so the conversation is what it was before it.
                self.history, self.dropped_turns = before
            else:
                self.history.append({"role": "assistant", "content": "".join(produced)})

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write history + KV cache atomically (temp file in the same directory, then os.replace)."""
        target = Path(path)
        model = self.model
        snapshot = model.save_cache()
        state = snapshot.state
        header = json.dumps({
            "version": SESSION_VERSION, "identity": model.identity, "model": model.name,
            "system": self.system, "history": self.history, "sampling": self.options, "reserve": self.reserve,
            "cache_ids": snapshot.ids, "n_past": len(snapshot.ids),
        }).encode("utf-8")
        body = SESSION_MAGIC + struct.pack("<IQ", SESSION_VERSION, len(header)) + header
        body += struct.pack("<Q", len(state)) + state
        body += hashlib.sha256(body).digest()
        directory = target.parent if str(target.parent) else Path(".")
        if target.is_dir():
            raise SessionFileError(f"cannot save the session to {target}: it is a directory")
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            raise SessionFileError(f"cannot save the session to {target}: {exc.strerror} ({directory})") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, target)
        except BaseException as exc:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            if isinstance(exc, OSError):
                raise SessionFileError(f"cannot save the session to {target}: {exc.strerror}") from None
            raise

    @classmethod
    def load(cls, path: Union[str, os.PathLike], model: "Model") -> "ChatSession":
        """A session saved by save(), checked against this model, with its KV cache restored."""
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise SessionFileError(f"cannot read session file {path}: {exc.strerror}") from None
        header, state = _parse_session(raw, path)
        if header.get("identity") != model.identity:
            raise SessionFileError(
                f"session file {path} was saved with another model or settings ({header.get('model')!r}); "
                f"it does not match {model.name!r} on backend {model.backend.info().name} with n_ctx {model.n_ctx}"
            )
        try:
            history = validate_messages(header["history"]) if header["history"] else []
            system = header["system"]
            cache_ids = [int(i) for i in header["cache_ids"]]
            n_past = int(header["n_past"])
            if n_past != len(cache_ids) or (system is not None and not isinstance(system, str)):
                raise ValueError("n_past and cache_ids disagree")
            if not isinstance(header["sampling"], dict):
                raise ValueError("sampling is not an object")
            session = cls(model, system=system, reserve=header.get("reserve"), **header["sampling"])
        except (KeyError, TypeError, ValueError, InvalidArgumentError) as exc:
            raise SessionFileError(f"session file {path} has an invalid header: {exc}") from None
        session.history = history
        try:
            model.restore_cache(cache_ids, state)
        except (InvalidArgumentError, SessionFileError) as exc:
            model.reset()
            raise SessionFileError(f"session file {path}: the KV cache does not load: {exc}") from None
        return session


def _parse_session(raw: bytes, path) -> "tuple[dict, bytes]":
    fixed = len(SESSION_MAGIC) + 12
    if len(raw) < fixed + 8 + 32 or not raw.startswith(SESSION_MAGIC):
        raise SessionFileError(f"{path} is not an edgesdk session file (or is truncated: {len(raw)} bytes)")
    if hashlib.sha256(raw[:-32]).digest() != raw[-32:]:
        raise SessionFileError(f"{path} is corrupt or truncated: its sha256 does not match ({len(raw)} bytes)")
    version, header_len = struct.unpack_from("<IQ", raw, len(SESSION_MAGIC))
    if version != SESSION_VERSION:
        raise SessionFileError(f"{path} is session format version {version}; this edgesdk reads {SESSION_VERSION}")
    if fixed + header_len + 8 > len(raw) - 32:
        raise SessionFileError(f"{path}: header length {header_len} runs past the end of the file")
    try:
        header = json.loads(raw[fixed:fixed + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SessionFileError(f"{path}: the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SessionFileError(f"{path}: the header is not a JSON object")
    (state_len,) = struct.unpack_from("<Q", raw, fixed + header_len)
    state_at = fixed + header_len + 8
    if state_at + state_len != len(raw) - 32:
        raise SessionFileError(f"{path}: the KV cache of {state_len} bytes does not match the file size {len(raw)}")
    return header, raw[state_at:state_at + state_len]


__all__ = ["ChatSession", "chat_completion", "chat_prompt_ids", "completion_chunk", "completion_result",
           "new_completion_id", "usage", "SESSION_MAGIC"]
