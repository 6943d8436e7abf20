"""One Model shared by many threads: calls are serialized, results stay exact; cancelling stops a call.

Every check here is about order and counts, never about how fast the machine is:
a cancel set between two steps stops the stream before the next one, so the
token counts are exact on a slow Pi and on a fast workstation alike.
"""
from __future__ import annotations

import threading

import pytest

import edgesdk
from edgesdk import backends
from edgesdk.chat import ChatSession
from edgesdk.errors import InvalidArgumentError

THREADS = 1
N_CTX = 256
N_WORKERS = 4
CALLS_PER_WORKER = 3
# Prompts that share no first token, so no call reuses another's cache: each answer is then
# computed exactly as on a fresh model, whatever ran before it.
PROMPTS = ["The capital of France is", "Water boils at", "My favourite colour is", "Seven times six equals"]
GREEDY = dict(temperature=0, repeat_penalty=1.0, max_tokens=8)
# A raw-text prompt the model continues for hundreds of tokens (an instruction-like one such as
# "Write a story." is answered with an immediate end-of-turn when not in the chat template).
STORY = "Once upon a time, in a land far away, there lived a dragon who"


@pytest.fixture(scope="module", params=backends.available())
def model(request, smollm2_path):
    m = edgesdk.load(str(smollm2_path), backend=request.param, n_ctx=N_CTX, threads=THREADS)
    yield m
    m.close()


def _run_workers(target, n=N_WORKERS):
    errors, workers = [], []

    def guarded(i):
        try:
            target(i)
        except BaseException as exc:        # reported by the main thread below
            errors.append(exc)

    for i in range(n):
        workers.append(threading.Thread(target=guarded, args=(i,)))
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)
    assert not any(w.is_alive() for w in workers), "a worker is still running: calls deadlocked"
    if errors:
        raise errors[0]


def test_threads_calling_generate_on_one_model_get_the_single_threaded_answers(model):
    first_ids = {model.tokenize(p)[0] for p in PROMPTS}
    assert len(first_ids) == len(PROMPTS)
    expected = {}
    for prompt in PROMPTS:
        model.reset()
        expected[prompt] = model.generate(prompt, **GREEDY)
    got = {i: [] for i in range(N_WORKERS)}

    def worker(i):
        for k in range(CALLS_PER_WORKER):
            prompt = PROMPTS[(i + k) % len(PROMPTS)]
            if k % 2:
                text = "".join(model.generate(prompt, stream=True, **GREEDY))
            else:
                text = model.generate(prompt, **GREEDY)
            got[i].append((prompt, text))

    _run_workers(worker)
    for i in range(N_WORKERS):
        assert len(got[i]) == CALLS_PER_WORKER
        for prompt, text in got[i]:
            assert text == expected[prompt], (prompt, text, expected[prompt])


def test_threads_with_their_own_sessions_on_one_model_keep_their_histories(model):
    sessions = [ChatSession(model, system=f"You are assistant number {i}.", **GREEDY) for i in range(N_WORKERS)]

    def worker(i):
        for question in ("What is 2 plus 2?", "And 3 plus 3?"):
            reply = "".join(sessions[i].send(question, stream=True))
            assert sessions[i].history[-1] == {"role": "assistant", "content": reply}

    _run_workers(worker)
    for i, session in enumerate(sessions):
        assert [m["role"] for m in session.history] == ["user", "assistant"] * 2
        assert session.messages[0]["content"] == f"You are assistant number {i}."


def test_a_second_call_from_the_thread_holding_an_open_stream_is_refused(model):
    stream = model.generate(PROMPTS[0], stream=True, **GREEDY)
    next(stream)
    with pytest.raises(InvalidArgumentError, match="unfinished stream"):
        model.generate(PROMPTS[1], **GREEDY)
    stream.close()
    assert model.generate(PROMPTS[1], **GREEDY)     # closing the stream frees the model


def test_another_thread_waits_for_an_open_stream_then_runs(model):
    stream = model.generate(PROMPTS[0], stream=True, **GREEDY)
    next(stream)
    started, finished = threading.Event(), threading.Event()

    def other():
        started.set()
        model.generate(PROMPTS[1], **GREEDY)
        finished.set()

    t = threading.Thread(target=other)
    t.start()
    started.wait()
    assert not finished.wait(0.5)       # held back while the stream is open ...
    stream.close()
    t.join(timeout=300)
    assert finished.is_set()            # ... and run once it is closed


def test_cancel_set_between_steps_stops_the_stream_before_the_next_token(model):
    cancel = threading.Event()
    pieces = []
    for piece in model.generate(STORY, stream=True, cancel=cancel, temperature=0, max_tokens=200):
        pieces.append(piece)
        cancel.set()                    # as a Ctrl-C handler would, after the first piece
    stats = model.last_stats
    # The greedy answer's first token is a whole word, so it is the first piece: nothing after it.
    assert stats.finish_reason == "cancelled"
    assert stats.completion_tokens == 1 and len(pieces) == 1


def test_cancel_from_another_thread_stops_a_long_answer(model):
    cancel = threading.Event()
    first = threading.Event()
    produced = []

    def consume():
        try:
            for piece in model.generate(STORY, stream=True, cancel=cancel, temperature=0, max_tokens=N_CTX - 20):
                produced.append(piece)
                first.set()
        finally:
            first.set()         # an answer that ends (or fails) at once must not leave the test waiting

    t = threading.Thread(target=consume)
    t.start()
    assert first.wait(300) and produced
    cancel.set()
    t.join(timeout=300)
    assert model.last_stats.finish_reason == "cancelled"
    assert model.last_stats.completion_tokens < N_CTX - 20


def test_a_cancel_already_set_evaluates_nothing(model):
    cancel = threading.Event()
    cancel.set()
    model.reset()
    assert model.generate(PROMPTS[2], cancel=cancel, **GREEDY) == ""
    assert model.last_stats.finish_reason == "cancelled" and model.last_stats.completion_tokens == 0
    assert model.cached_ids == []
