"""edgesdk.batching: each request answers as Model.generate answers it alone; queue, cancel, prefix reuse; SmolLM2.

The references are Model.generate on a model of its own (the same file, the
same settings). Several sequences run on the native engine's own
eval_batch and on tests/multi_seq_backend.py (one single-sequence backend per
sequence, which records its steps and copies for the bookkeeping tests);
test_server.py runs the same answers through the HTTP server."""
from __future__ import annotations

import threading
import time

import pytest

import edgesdk
from edgesdk.batching import BatchScheduler
from edgesdk.errors import ContextOverflowError, InvalidArgumentError, QueueFullError, SchedulerClosedError
from multi_seq_backend import model_with_sequences

N_CTX = 256
THREADS = 1
LOAD = dict(backend="native", n_ctx=N_CTX, threads=THREADS)
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):",
           "The three primary colors are"]
SYSTEM = "You are a helpful assistant who answers in one short sentence. " * 3


@pytest.fixture(scope="module")
def reference(smollm2_path):
    m = edgesdk.load(str(smollm2_path), **LOAD)
    yield m
    m.close()


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = edgesdk.load(str(smollm2_path), **LOAD)
    yield m
    m.close()


@pytest.fixture(scope="module")
def native3(smollm2_path):
    """The native engine holding three sequences itself (one eval_batch pass for all)."""
    m = edgesdk.load(str(smollm2_path), n_seq=3, **LOAD)
    yield m
    m.close()


@pytest.fixture(scope="module")
def model3(smollm2_path):
    m = model_with_sequences(smollm2_path, 3, **LOAD)
    yield m
    m.close()


def expected(reference, prompt, **options):
    """(text, finish_reason, completion_tokens) of Model.generate alone."""
    text = reference.generate(prompt, **options)
    stats = reference.last_stats
    return text, stats.finish_reason, stats.completion_tokens


def answered(generation):
    text = generation.text()
    return text, generation.stats.finish_reason, generation.stats.completion_tokens


GREEDY = dict(temperature=0, max_tokens=20)
SEEDED = dict(temperature=0.9, top_k=40, seed=1234, max_tokens=20)


@pytest.mark.parametrize("fixture", ["model", "model3", "native3"])
def test_concurrent_requests_answer_as_each_would_alone(request, reference, fixture):
    m = request.getfixturevalue(fixture)
    options = [dict(GREEDY, stop=["."]), SEEDED, GREEDY, dict(SEEDED, seed=7)]
    want = [expected(reference, p, **o) for p, o in zip(PROMPTS, options)]
    with BatchScheduler(m, max_queue=8, prompt_tokens_per_step=4) as scheduler:
        generations = [scheduler.submit(m.tokenize(p), m.generation.with_options(**o))
                       for p, o in zip(PROMPTS, options)]
        got = [answered(g) for g in generations]
    assert got == want
    assert want[0][1] == "stop" and "." not in want[0][0]


def test_several_sequences_decode_in_one_step_and_prompts_arrive_in_chunks(model3, reference):
    backend = model3.backend
    backend.steps.clear()
    with BatchScheduler(model3, prompt_tokens_per_step=3) as scheduler:
        generations = [scheduler.submit(model3.tokenize(p), model3.generation.with_options(**GREEDY))
                       for p in PROMPTS[:3]]
        got = [answered(g) for g in generations]
    assert got == [expected(reference, p, **GREEDY) for p in PROMPTS[:3]]
    assert max(len(step) for step in backend.steps) == 3           # three sequences in one engine step
    # At most one id per answering sequence plus prompt_tokens_per_step prompt ids in any step.
    assert all(sum(len(e.ids) for e in step) <= 3 + 3 for step in backend.steps)


def test_a_shared_prefix_is_copied_from_the_sequence_holding_it(model3, reference):
    check_prefix_copy(model3, reference)
    assert any(src != dst for src, dst, n in model3.backend.copies)


def test_the_native_engine_copies_a_shared_prefix_and_answers_the_same(native3, reference):
    check_prefix_copy(native3, reference)


def check_prefix_copy(model3, reference):
    ids_a = model3.chat_formatter.encode([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}])
    ids_b = model3.chat_formatter.encode([{"role": "system", "content": SYSTEM},
                                          {"role": "user", "content": "Name a color"}])
    shared = next(i for i, (a, b) in enumerate(zip(ids_a, ids_b)) if a != b)
    config = model3.generation.with_options(**GREEDY)
    with BatchScheduler(model3) as scheduler:
        first = scheduler.submit(ids_a, config)
        first.text()
        # Keep sequence 0 (holding the prefix) busy, so the next request must take another one.
        busy = scheduler.submit(ids_a + ids_b[-3:], model3.generation.with_options(temperature=0, max_tokens=60))
        second = scheduler.submit(ids_b, config)
        text_b = second.text()
        busy.text()
    assert second.stats.reused_tokens >= shared > 20
    want = reference.stream_ids(ids_b, config)
    assert text_b == "".join(want)


def test_the_same_prompt_again_reuses_the_cache_of_its_sequence(model):
    ids = model.tokenize(PROMPTS[1])
    with BatchScheduler(model) as scheduler:
        scheduler.submit(ids, model.generation.with_options(**GREEDY)).text()
        again = scheduler.submit(ids, model.generation.with_options(**GREEDY))
        again.text()
    assert again.stats.reused_tokens == len(ids) - 1


def test_a_full_queue_raises_queue_full_with_a_retry_time(model):
    config = model.generation.with_options(temperature=0, max_tokens=200)
    with BatchScheduler(model, max_queue=1) as scheduler:
        running = scheduler.submit(model.tokenize(PROMPTS[0]), config)
        waiting = scheduler.submit(model.tokenize(PROMPTS[1]), config)
        with pytest.raises(QueueFullError) as info:
            scheduler.submit(model.tokenize(PROMPTS[2]), config)
        assert 1 <= info.value.retry_after_s <= 60
        assert scheduler.counters.requests_rejected == 1
        waiting.cancel()
        running.cancel()
        assert running.text() is not None and running.stats.finish_reason == "cancelled"
        assert waiting.text() == "" and waiting.stats.finish_reason == "cancelled"
        assert waiting.stats.completion_tokens == 0


def test_cancel_stops_a_running_generation_within_a_step(model):
    with BatchScheduler(model) as scheduler:
        generation = scheduler.submit(model.tokenize(PROMPTS[1]),
                                      model.generation.with_options(temperature=0, max_tokens=200))
        pieces = iter(generation)
        next(pieces)
        generation.cancel()
        rest = list(pieces)
    assert generation.stats.finish_reason == "cancelled"
    assert generation.stats.completion_tokens < 200 and len(rest) < 10


def test_closing_fails_waiting_requests_and_cancels_running_ones(model):
    config = model.generation.with_options(temperature=0, max_tokens=200)
    scheduler = BatchScheduler(model)
    running = scheduler.submit(model.tokenize(PROMPTS[0]), config)
    waiting = scheduler.submit(model.tokenize(PROMPTS[1]), config)
    next(iter(running))
    scheduler.close()
    assert running.finished.is_set() and running.stats.finish_reason == "cancelled"
    with pytest.raises(SchedulerClosedError):
        waiting.text()
    with pytest.raises(SchedulerClosedError):
        scheduler.submit(model.tokenize(PROMPTS[0]), config)


def test_the_model_waits_while_scheduled_and_answers_right_after(model, reference):
    scheduler = BatchScheduler(model)
    done = threading.Event()
    result = []

    def direct():
        result.append(model.generate(PROMPTS[3], **GREEDY))
        done.set()

    thread = threading.Thread(target=direct)
    thread.start()
    assert not done.wait(0.5)
    scheduler.close()
    thread.join(60)
    assert result == [expected(reference, PROMPTS[3], **GREEDY)[0]]


def test_bad_requests_are_refused_in_the_callers_thread(model):
    with BatchScheduler(model) as scheduler:
        config = model.generation
        with pytest.raises(ContextOverflowError):
            scheduler.submit([1] * N_CTX, config)
        with pytest.raises(InvalidArgumentError):
            scheduler.submit([model.n_vocab], config)
        with pytest.raises(InvalidArgumentError):
            scheduler.submit([], config)
        with pytest.raises(InvalidArgumentError):
            scheduler.submit([1, 2], {"max_tokens": 3})
        with pytest.raises(InvalidArgumentError):
            BatchScheduler(model, max_queue=-1)


def test_answers_longer_than_the_context_end_with_length(model):
    ids = model.tokenize(PROMPTS[1])
    with BatchScheduler(model) as scheduler:
        generation = scheduler.submit(ids, model.generation.with_options(temperature=0, max_tokens=N_CTX * 2,
                                                                       repeat_penalty=1.0))
        generation.text()
    stats = generation.stats
    assert stats.finish_reason in ("length", "stop")
    assert len(ids) + stats.completion_tokens <= N_CTX
    assert stats.tokens_per_s > 0 and stats.total_s >= stats.prefill_s


def test_tokens_per_second_counts_recent_steps(model):
    with BatchScheduler(model) as scheduler:
        scheduler.submit(model.tokenize(PROMPTS[0]), model.generation.with_options(**GREEDY)).text()
        time.sleep(0.01)
        assert scheduler.tokens_per_s > 0
        assert scheduler.counters.completion_tokens == 20 and scheduler.counters.steps >= 20
