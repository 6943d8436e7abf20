"""model.chat and ChatSession: OpenAI shapes, KV reuse across turns, overflow policy, session files."""
from __future__ import annotations

import os

import pytest

import edgesdk
from edgesdk.chat import ChatSession
from edgesdk.errors import ChatFormatError, ContextOverflowError, InvalidArgumentError, SessionFileError

N_CTX = 512
THREADS = 1
GREEDY = dict(temperature=0, max_tokens=24)
# ChatML around a new user turn: <|im_end|> \n <|im_start|> user \n ... <|im_end|> \n <|im_start|> assistant \n,
# plus the previous answer's last token, which is sampled but never evaluated.
CHATML_TURN_OVERHEAD = 12


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = edgesdk.load(str(smollm2_path), backend="llamacpp", n_ctx=N_CTX, threads=THREADS)
    yield m
    m.close()


def test_chat_returns_an_openai_shaped_completion(model):
    reply = model.chat([{"role": "user", "content": "Say hello."}], **GREEDY)
    assert reply["object"] == "chat.completion" and reply["id"].startswith("chatcmpl-")
    assert isinstance(reply["created"], int) and reply["model"] == model.name
    choice = reply["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert usage["prompt_tokens"] == len(model.chat_formatter.encode([{"role": "user", "content": "Say hello."}]))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > usage["prompt_tokens"]


def test_streamed_chunks_add_up_to_the_whole_answer(model):
    messages = [{"role": "user", "content": "Name a fruit."}]
    whole = model.chat(messages, **GREEDY)
    chunks = list(model.chat(messages, stream=True, **GREEDY))
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_max_tokens_gives_finish_reason_length(model):
    reply = model.chat([{"role": "user", "content": "Tell me a long story."}], temperature=0, max_tokens=4)
    assert reply["choices"][0]["finish_reason"] == "length" and reply["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("messages,error", [
    ([], ChatFormatError),
    ([{"role": "robot", "content": "hi"}], ChatFormatError),
    ([{"role": "user", "content": 42}], ChatFormatError),
    ([{"role": "user", "content": None}], ChatFormatError),
    ({"role": "user", "content": "hi"}, ChatFormatError),
])
def test_malformed_conversations_raise_typed_errors(model, messages, error):
    with pytest.raises(error):
        model.chat(messages)


def test_unknown_sampling_option_is_rejected(model):
    with pytest.raises(InvalidArgumentError, match="temprature"):
        model.chat([{"role": "user", "content": "hi"}], temprature=0.5)


def test_session_second_turn_prefills_only_the_new_message(model):
    session = ChatSession(model, system="You are a helpful assistant.", **GREEDY)
    first = session.send("What is the capital of France?")
    assert "Paris" in first
    turn1_tokens = model.last_stats.prompt_tokens + model.last_stats.completion_tokens
    second = session.send("And of Italy?")
    stats = session.last_stats
    new_message = len(model.tokenizer.encode("And of Italy?", add_special=False))
    # Reused: everything up to the end of the first answer; evaluated: the new turn's
    # scaffolding (<|im_end|>, role lines) and the message itself, a handful of tokens.
    assert stats.reused_tokens >= turn1_tokens - 3
    assert stats.prompt_tokens - stats.reused_tokens <= new_message + CHATML_TURN_OVERHEAD
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[3]["content"] == second


def test_streamed_turn_is_recorded_when_the_stream_ends(model):
    session = ChatSession(model, **GREEDY)
    pieces = list(session.send("Say hi.", stream=True))
    assert session.history[-1] == {"role": "assistant", "content": "".join(pieces)}


def test_overflow_drops_oldest_turns_keeps_system_and_rebuilds_once(model):
    system = "You are a helpful assistant."
    session = ChatSession(model, system=system, reserve=64, temperature=0, max_tokens=16)
    long_text = "Please remember this sentence about apples and oranges. " * 16   # ~160 tokens
    for k in range(4):
        session.send(f"Turn {k}: {long_text}")
    assert session.dropped_turns >= 1
    assert session.messages[0] == {"role": "system", "content": system}
    assert session.history[0]["role"] == "user" and "Turn 0" not in session.history[0]["content"]
    ids = model.chat_formatter.encode(session.messages[:-1] if session.history[-1]["role"] == "assistant"
                                      else session.messages)
    assert len(ids) <= N_CTX - 64
    # The turn after the drop reused the system prompt only: the cache was rebuilt once.
    system_ids = model.chat_formatter.encode([{"role": "system", "content": system}], add_generation_prompt=False)
    rebuilt = session.last_stats
    # (plus the few tokens every turn starts with: "<|im_start|>user\nTurn ")
    assert len(system_ids) <= rebuilt.reused_tokens <= len(system_ids) + 6
    session.send("Thanks!")
    assert session.last_stats.reused_tokens > rebuilt.prompt_tokens - 3


def test_message_too_long_even_alone_raises_and_keeps_history(model):
    session = ChatSession(model, **GREEDY)
    session.send("Hello!")
    before = list(session.history)
    with pytest.raises(ContextOverflowError):
        session.send("word " * N_CTX)
    assert session.history == before


def test_saved_session_resumes_with_history_and_cache(model, tmp_path):
    path = tmp_path / "chat.session"
    session = ChatSession(model, system="Be brief.", **GREEDY)
    session.send("What is the capital of France?")
    session.save(path)
    expected_next = session.send("And of Spain?")
    model.reset()
    model.backend.eval([5, 6, 7], 0)                  # the cache now holds something else
    restored = ChatSession.load(path, model)
    assert restored.history == session.history[:2] and restored.system == "Be brief."
    answer = restored.send("And of Spain?")
    assert answer == expected_next
    new_message = len(model.tokenizer.encode("And of Spain?", add_special=False))
    assert restored.last_stats.prompt_tokens - restored.last_stats.reused_tokens <= new_message + CHATML_TURN_OVERHEAD


def test_save_is_atomic_and_leaves_no_temporary_files(model, tmp_path):
    path = tmp_path / "s.session"
    session = ChatSession(model, **GREEDY)
    session.send("Hi")
    session.save(path)
    first = path.read_bytes()
    session.send("Bye")
    session.save(path)
    assert path.read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["s.session"]


def test_failed_save_keeps_the_old_file(model, tmp_path, monkeypatch):
    path = tmp_path / "s.session"
    session = ChatSession(model, **GREEDY)
    session.send("Hi")
    session.save(path)
    before = path.read_bytes()

    def broken_state():
        raise OSError("disk full")
    monkeypatch.setattr(model.backend, "save_state", broken_state)
    with pytest.raises(OSError):
        session.save(path)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["s.session"]


def test_truncated_or_corrupt_session_file_is_rejected_and_nothing_changes(model, tmp_path):
    path = tmp_path / "s.session"
    session = ChatSession(model, **GREEDY)
    session.send("Hi")
    session.save(path)
    blob = path.read_bytes()
    cached = model.cached_ids
    for name, data in {"truncated": blob[: len(blob) // 2], "flipped": blob[:100] + bytes([blob[100] ^ 1]) + blob[101:],
                       "empty": b"", "not a session": b"GGUF" + bytes(200)}.items():
        bad = tmp_path / f"{name}.session"
        bad.write_bytes(data)
        with pytest.raises(SessionFileError):
            ChatSession.load(bad, model)
        assert bad.read_bytes() == data
    assert model.cached_ids == cached


def test_session_from_another_model_is_rejected(model, gemma3_path, tmp_path):
    path = tmp_path / "gemma.session"
    gemma = edgesdk.load(str(gemma3_path), backend="llamacpp", n_ctx=128, threads=THREADS)
    try:
        session = ChatSession(gemma, temperature=0, max_tokens=4)
        session.send("Hi")
        session.save(path)
    finally:
        gemma.close()
    with pytest.raises(SessionFileError, match="another model"):
        ChatSession.load(path, model)
    other_ctx = edgesdk.load(model.path, backend="llamacpp", n_ctx=256, threads=THREADS)
    try:
        mine = tmp_path / "mine.session"
        ChatSession(model, **GREEDY).save(mine)
        with pytest.raises(SessionFileError):
            ChatSession.load(mine, other_ctx)
    finally:
        other_ctx.close()


def test_session_saved_after_an_interrupted_eval_still_loads(model, tmp_path):
    # Ctrl-C between the backend's eval and the model's bookkeeping leaves the
    # cache holding a position the model cannot name; save must still be loadable.
    session = ChatSession(model, **GREEDY)
    session.send("Hi")
    known = model.cached_ids
    model.backend.eval([42], model.backend.n_past)
    assert model.backend.n_past == len(known) + 1
    path = tmp_path / "s.session"
    session.save(path)
    restored = ChatSession.load(path, model)
    assert model.cached_ids == known and model.backend.n_past == len(known)
    assert restored.history == session.history
