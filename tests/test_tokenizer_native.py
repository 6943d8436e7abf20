"""The C merge loop gives the same ids as the Python reference, and llama.cpp's, on long words."""
from __future__ import annotations

import random

import pytest

from edgesdk.tokenizer import Tokenizer
from edgesdk.tokenizer import native_loops
from edgesdk.tokenizer.bpe import bpe_merge, byte_level
from edgesdk.tokenizer.spm import spm_merge

import llama_cpp


def test_the_native_merge_loop_is_built_with_the_package():
    # The tests below compare it with the Python reference: without it they would prove nothing.
    assert native_loops.available()


ALPHABETS = ["ab", "abcdefghij", "the quick brown", "aaaaab", "0123456789", "абвгдежзий", "你好世界的人",
             "😀👍🏽\u200d", "ab\u00e9\u0301 ", "xyzXYZ_-.,;"]


def _random_words(seed: int, count: int):
    rng = random.Random(seed)
    words = []
    for _ in range(count):
        alphabet = rng.choice(ALPHABETS)
        length = rng.choice([1, 2, 3, 5, 17, 48, 49, 100, 333, 1000])
        words.append("".join(rng.choice(alphabet) for _ in range(length)))
    return words


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return Tokenizer.from_gguf(smollm2_path)


@pytest.fixture(scope="module")
def gemma3(gemma3_path):
    return Tokenizer.from_gguf(gemma3_path)


@pytest.mark.models
def test_bpe_native_merge_equals_python_reference(smollm2):
    model = smollm2._model
    for word in _random_words(11, 300):
        reference = model._pieces_to_ids(bpe_merge(list(byte_level(word)), model.ranks))
        assert model.encode_long_word(word) == reference, word


@pytest.mark.models
def test_spm_native_merge_equals_python_reference(gemma3):
    model = gemma3._model
    for word in _random_words(12, 300):
        escaped = model.escape(word, after_special=False)
        reference = model._symbols_to_ids(spm_merge(list(escaped), model.token_to_id, model.scores))
        assert model.encode_long_word(escaped) == reference, word


@pytest.mark.models
def test_whole_text_merge_equals_word_by_word_merge(gemma3):
    """Cutting SentencePiece text into words before merging changes nothing (spm.py's claim)."""
    model = gemma3._model
    rng = random.Random(13)
    for _ in range(200):
        text = " ".join(rng.choice(["hello", "world", "a", "..", "  ", "naïve", "x.y", "你好", "😀"])
                        for _ in range(rng.randint(1, 12)))
        assert model.encode(text, True) == model.encode_reference(text, True), text


@pytest.mark.models
@pytest.mark.slow
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_quarter_megabyte_word_equals_llamacpp(name, request):
    path = request.getfixturevalue(f"{name}_path")
    tokenizer = Tokenizer.from_gguf(path)
    reference = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    rng = random.Random(14)
    for alphabet in ("ab", "abcdefghijklmnop", "éa"):
        text = "".join(rng.choice(alphabet) for _ in range(1 << 18))  # llama.cpp itself is slow here
        assert tokenizer.encode(text, add_special=False) == reference.tokenize(
            text.encode("utf-8"), add_bos=False, special=False)
