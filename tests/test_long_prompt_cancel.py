"""A long prompt is interruptible: the native engine stops within a layer when asked (ek_model_abort),
the Model runs a prompt on a helper thread when given a cancel event so the caller's thread can ask,
and a chat message stopped before its answer leaves the conversation as it was."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import edgesdk
from edgesdk.chat import ChatSession
from edgesdk.errors import CancelledError

# One batch holds the whole prompt, so only the engine's own check can stop it early: the
# Python-level loop has no boundary to look at the event on.
N_CTX = 4096
PROMPT_TOKENS = 4000
CANCEL_AFTER_S = 0.5
# A whole 4,000-token prompt takes SmolLM2 seconds even on a fast idle machine; a layer, or a
# tile of one layer's attention, well under a second on a loaded 2-core one.
STOP_WITHIN_S = 2.0


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = edgesdk.load(str(smollm2_path), backend="native", n_ctx=N_CTX, n_batch=N_CTX, threads=2)
    yield m
    m.close()


def _prompt(model, n):
    return [int(t) for t in np.random.default_rng(5).integers(300, 30000, n)]


def test_abort_stops_an_eval_on_another_thread_and_the_engine_still_works(model):
    backend = model.backend
    ids = _prompt(model, PROMPT_TOKENS)
    outcome = {}

    def work():
        try:
            backend.eval(ids, 0)
            outcome["finished"] = True
        except CancelledError:
            outcome["cancelled"] = time.perf_counter()

    t = threading.Thread(target=work)
    t.start()
    time.sleep(CANCEL_AFTER_S)
    asked = time.perf_counter()
    while t.is_alive():
        backend.abort()
        t.join(0.01)
    assert "cancelled" in outcome, "the eval ran to the end"
    assert outcome["cancelled"] - asked < STOP_WITHIN_S
    assert backend.n_past == 0  # nothing of the stopped prompt is trusted
    # The next eval is not cancelled by the old request, and gives what a fresh engine gives.
    short = ids[:32]
    again = backend.eval(short, 0)
    with edgesdk.load(model.path, backend="native", n_ctx=64, threads=2) as fresh:
        np.testing.assert_allclose(again, fresh.backend.eval(short, 0), rtol=1e-4, atol=1e-3)


def test_cancel_event_stops_a_long_prompt_and_the_chat_forgets_the_message(model):
    session = ChatSession(model, max_tokens=8, temperature=0)
    session.send("Say hi.")
    before = [dict(m) for m in session.history]
    cancel = threading.Event()
    timer = threading.Timer(CANCEL_AFTER_S, cancel.set)
    text = " ".join(f"word{i}" for i in range(PROMPT_TOKENS // 5))
    timer.start()
    t0 = time.perf_counter()
    try:
        pieces = list(session.send(text, stream=True, cancel=cancel))
    finally:
        timer.cancel()
    assert session.last_stats.finish_reason == "cancelled" and pieces == []
    assert time.perf_counter() - t0 < CANCEL_AFTER_S + STOP_WITHIN_S
    assert session.history == before
    assert session.send("Say hi.")  # the conversation goes on
