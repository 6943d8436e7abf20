"""edgesdk.load / Model: scoring, generation, stop strings, prefix reuse, bad input; real SmolLM2."""
from __future__ import annotations

import numpy as np
import pytest

import edgesdk
from edgesdk.errors import BackendUnavailableError, ContextOverflowError, InvalidArgumentError, ModelNotFoundError
from edgesdk import backends
from edgesdk.generation import GenerationConfig, StopScanner

N_CTX = 512
THREADS = 1
# Same positions evaluated in different batch splits (see test_backend_contract).
SCORE_ATOL = 2e-2


@pytest.fixture(scope="module")
def model(smollm2_path):
    m = edgesdk.load(str(smollm2_path), backend="llamacpp", n_ctx=N_CTX, threads=THREADS)
    yield m
    m.close()


@pytest.fixture(scope="module")
def reference_vocab(smollm2_path):
    import llama_cpp

    return llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)


def test_load_by_registry_name_reports_model_facts(model):
    m = edgesdk.load("smollm2-135m-instruct", backend="llamacpp", n_ctx=128, threads=THREADS)
    try:
        assert m.n_ctx == 128 and m.n_vocab == 49152
        assert m.metadata["general.architecture"] == "llama"
        assert m.path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
        assert m.tokenizer.n_vocab == 49152 and 2 in m.tokenizer.eot_ids
        assert m.backend.info().name == "llamacpp"
    finally:
        m.close()


def test_score_rows_match_the_backend_evaluating_each_prefix(model, reference_vocab):
    ids = reference_vocab.tokenize(b"The quick brown fox jumps over the lazy dog, and then", add_bos=False)
    rows = model.score(ids)
    assert rows.shape == (len(ids), 49152) and rows.dtype == np.float32
    for k in (0, 5, len(ids) - 1):
        last = model.backend.eval(ids[:k + 1], 0)
        np.testing.assert_allclose(rows[k], last, atol=SCORE_ATOL)


def test_greedy_generation_is_the_argmax_chain(model, reference_vocab):
    prompt = "The capital of France is"
    text = model.generate(prompt, max_tokens=8, temperature=0, repeat_penalty=1.0)
    ids = reference_vocab.tokenize(prompt.encode(), add_bos=False)
    for _ in range(8):
        ids.append(int(np.argmax(model.backend.eval(ids, 0))))
    expected = reference_vocab.detokenize(ids[-8:]).decode()
    assert text == expected
    assert "Paris" in text


def test_same_seed_same_text_and_streaming_equals_whole(model):
    a = model.generate("Once upon a time", max_tokens=16, temperature=1.0, seed=42)
    b = "".join(model.generate("Once upon a time", max_tokens=16, temperature=1.0, seed=42, stream=True))
    c = model.generate("Once upon a time", max_tokens=16, temperature=1.0, seed=43)
    assert a == b
    assert a != c


def test_second_call_evaluates_only_the_new_suffix(model):
    prompt = "List the planets of the solar system in order from the Sun:"
    first = model.generate(prompt, max_tokens=6, temperature=0)
    longer = prompt + first + " and"
    model.generate(longer, max_tokens=2, temperature=0)
    stats = model.last_stats
    assert stats.prompt_tokens > stats.reused_tokens >= stats.prompt_tokens - 4


def test_stop_string_spanning_tokens_ends_generation_without_emitting_it(model):
    prompt = "Count: one, two, three, four, five, six,"
    free = model.generate(prompt, max_tokens=12, temperature=0)
    assert "eight" in free                      # greedy continues the count
    stop = " eight"                             # several tokens: " eight" after "seven,"
    pieces = list(model.generate(prompt, max_tokens=12, temperature=0, stop=[stop], stream=True))
    text = "".join(pieces)
    assert text == free[:free.index(stop)]
    assert model.last_stats.finish_reason == "stop"


def test_stop_scanner_holds_back_possible_beginnings():
    scanner = StopScanner(["</answer>", "STOP"])
    assert scanner.feed("The result is 4 <") == ("The result is 4 ", False)
    assert scanner.feed("/ans") == ("", False)
    assert scanner.feed("wer> tail") == ("", True)
    scanner = StopScanner(["STOP"])
    assert scanner.feed("ST") == ("", False)
    assert scanner.feed("ART") == ("START", False)
    assert scanner.finish() == ""


def test_max_tokens_limits_generation_with_length_finish(model):
    out = list(model.generate("The history of the Roman Empire begins", max_tokens=3, temperature=0, stream=True))
    assert model.last_stats.completion_tokens == 3
    assert model.last_stats.finish_reason == "length"
    assert out


def test_end_of_turn_token_stops_generation(model):
    ids = model.chat_formatter.encode([{"role": "user", "content": "Say just: hello"}])
    text = "".join(model.stream_ids(ids, GenerationConfig.from_options(temperature=0, max_tokens=100)))
    assert model.last_stats.finish_reason == "stop"
    assert "<|im_end|>" not in text and model.last_stats.completion_tokens < 100


@pytest.mark.parametrize("prompt,kwargs,error", [
    ("", {}, InvalidArgumentError),
    ([], {}, InvalidArgumentError),
    ([1, 2, 49152], {}, InvalidArgumentError),
    ([5, -1], {}, InvalidArgumentError),
    ("hello", {"max_tokens": 0}, InvalidArgumentError),
    ("hello", {"max_tokens": -5}, InvalidArgumentError),
    ("hello", {"temperature": -1.0}, InvalidArgumentError),
    ("hello", {"stop": 5}, InvalidArgumentError),
    ([100] * N_CTX, {}, ContextOverflowError),
    ("word " * (N_CTX + 50), {}, ContextOverflowError),
])
def test_bad_generation_input_raises_typed_errors(model, prompt, kwargs, error):
    with pytest.raises(error):
        model.generate(prompt, **kwargs)


def test_score_rejects_out_of_range_and_overlong_ids(model):
    with pytest.raises(InvalidArgumentError, match="49152"):
        model.score([1, 49152])
    with pytest.raises(ContextOverflowError):
        model.score([100] * (N_CTX + 1))


def test_unknown_model_and_backend_are_typed_errors(tmp_path):
    with pytest.raises(ModelNotFoundError):
        edgesdk.load(str(tmp_path / "missing.gguf"), backend="llamacpp")
    with pytest.raises(InvalidArgumentError, match="backend"):
        edgesdk.load("smollm2-135m-instruct", backend="tpu")


def test_auto_falls_back_when_the_native_library_is_missing(smollm2_path, monkeypatch):
    from edgesdk.backends.base import Availability
    from edgesdk.backends.native import NativeBackend

    m = edgesdk.load(str(smollm2_path), n_ctx=64, threads=THREADS)
    assert m.backend.info().name == "native"      # auto prefers our own engine
    m.close()
    monkeypatch.setattr(NativeBackend, "available", classmethod(lambda cls: Availability(False, "not built here")))
    m = edgesdk.load(str(smollm2_path), backend="auto", n_ctx=64, threads=THREADS)
    assert m.backend.info().name == "llamacpp"
    m.close()
    with pytest.raises(BackendUnavailableError, match="native backend is not available here: not built here"):
        edgesdk.load(str(smollm2_path), backend="native", n_ctx=64, threads=THREADS)


@pytest.fixture(scope="module", params=backends.available())
def any_backend_model(request, smollm2_path):
    m = edgesdk.load(str(smollm2_path), backend=request.param, n_ctx=N_CTX, threads=THREADS)
    yield m
    m.close()


@pytest.mark.slow
@pytest.mark.parametrize("question,expected", [
    ("What is 2 plus 2?", [["4", "four"]]),
    ("Name three primary colors.", [["red"], ["blue"], ["yellow"]]),
])
def test_greedy_chat_answers_simple_questions(any_backend_model, question, expected):
    reply = any_backend_model.chat([{"role": "user", "content": question}], temperature=0, max_tokens=64)
    text = reply["choices"][0]["message"]["content"].lower()
    for alternatives in expected:
        assert any(word in text for word in alternatives), text


@pytest.mark.slow
def test_session_turns_reuse_the_cache_on_every_backend(any_backend_model):
    from edgesdk.chat import ChatSession
    session = ChatSession(any_backend_model, temperature=0, max_tokens=16)
    session.send("What is the capital of France?")
    session.send("And of Italy?")
    stats = session.last_stats
    assert stats.prompt_tokens - stats.reused_tokens <= 20


def test_load_asks_the_memory_planner_for_the_context(smollm2_path):
    from edgesdk.errors import MemoryBudgetError
    with pytest.raises(MemoryBudgetError):
        edgesdk.load(str(smollm2_path), backend="llamacpp", threads=THREADS, max_memory=32 * 2**20)
    m = edgesdk.load(str(smollm2_path), backend="llamacpp", threads=THREADS, max_memory=2**30)
    try:
        assert m.memory_plan is not None and m.n_ctx == m.memory_plan.n_ctx
        assert 256 <= m.n_ctx <= 8192          # SmolLM2 was trained for 8192 positions
    finally:
        m.close()
