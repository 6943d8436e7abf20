"""Bad input gets a typed error or a documented replacement character, never a crash or a hang."""
from __future__ import annotations

import time

import numpy as np
import pytest

from edgesdk.errors import InvalidArgumentError, TokenizerError
from edgesdk.tokenizer import Tokenizer

REPLACEMENT = "\ufffd"
# The merge is O(n log n): ten times the text takes about ten times as long. A quadratic
# path would take ~100 times; the bound sits between, wide enough for a noisy shared machine
# (the ratio, unlike a time limit, does not depend on how fast the machine is).
TENFOLD_TEXT_TIME_RATIO_MAX = 30.0


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def tokenizer(request):
    return Tokenizer.from_gguf(request.getfixturevalue(f"{request.param}_path"))


def _tiny_spm_metadata(**overrides):
    tokens = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab"] + [f"<0x{b:02X}>" for b in range(256)]
    metadata = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": np.linspace(0, -1, len(tokens), dtype=np.float32),
        "tokenizer.ggml.token_type": np.array([2, 3, 3, 1, 1, 1, 1, 1] + [6] * 256, dtype=np.int32),
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    metadata.update(overrides)
    return metadata


@pytest.mark.models
def test_invalid_utf8_bytes_are_replaced_by_u_fffd(tokenizer):
    assert tokenizer.encode(b"ok\xff\xfe!", add_special=False) == tokenizer.encode("ok\ufffd\ufffd!", add_special=False)


@pytest.mark.models
def test_lone_surrogates_are_replaced_by_u_fffd(tokenizer):
    assert tokenizer.encode("a\ud800b\udfff", add_special=False) == tokenizer.encode("a\ufffdb\ufffd", add_special=False)


@pytest.mark.models
def test_nul_characters_round_trip(tokenizer):
    ids = tokenizer.encode("a\x00b\x00", add_special=False)
    assert ids
    assert tokenizer.decode(ids) == "a\x00b\x00"


@pytest.mark.models
def test_text_of_the_wrong_type_is_an_invalid_argument(tokenizer):
    with pytest.raises(InvalidArgumentError, match="str or bytes"):
        tokenizer.encode(12345)


@pytest.mark.models
@pytest.mark.parametrize("bad_id", [-1, -100, 10 ** 9])
def test_out_of_range_ids_are_rejected_with_the_id(tokenizer, bad_id):
    with pytest.raises(InvalidArgumentError, match=str(bad_id)):
        tokenizer.decode([1, bad_id])
    with pytest.raises(InvalidArgumentError, match=str(bad_id)):
        tokenizer.streaming_decoder().push(bad_id)
    with pytest.raises(InvalidArgumentError):
        tokenizer.token_bytes(bad_id)


@pytest.mark.models
def test_vocab_size_is_the_first_bad_id(tokenizer):
    with pytest.raises(InvalidArgumentError, match=f"out of range \\[0, {tokenizer.n_vocab}\\)"):
        tokenizer.decode([tokenizer.n_vocab])


@pytest.mark.models
def test_bytes_that_are_not_utf8_decode_to_u_fffd(gemma3_path):
    tokenizer = Tokenizer.from_gguf(gemma3_path)
    byte_ff = tokenizer.vocab.token_to_id["<0xFF>"]
    ok = tokenizer.encode("ok", add_special=False)
    assert tokenizer.decode(ok + [byte_ff] + ok) == "ok" + REPLACEMENT + "ok"


@pytest.mark.models
@pytest.mark.slow
def test_ten_megabytes_encode_in_time_linear_in_their_length(tokenizer):
    mixed = ("Hello, world! 12345 " * 8 + "x" * 1000 + " 你好 😀\n")
    for unit in (mixed, "a"):
        times = {}
        for n_chars in (1_000_000, 10_000_000):
            text = (unit * (n_chars // len(unit) + 1))[:n_chars]
            start = time.perf_counter()
            ids = tokenizer.encode(text, add_special=False)
            times[n_chars] = time.perf_counter() - start
            assert len(ids) > n_chars // 40
        ratio = times[10_000_000] / times[1_000_000]
        assert ratio < TENFOLD_TEXT_TIME_RATIO_MAX, f"10x the text took {ratio:.1f}x as long: {times}"


def test_arrays_of_different_lengths_are_a_tokenizer_error():
    metadata = _tiny_spm_metadata()
    metadata["tokenizer.ggml.scores"] = metadata["tokenizer.ggml.scores"][:-3]
    with pytest.raises(TokenizerError, match="scores has 261 entries, tokenizer.ggml.tokens has 264"):
        Tokenizer.from_gguf(metadata)
    metadata = _tiny_spm_metadata()
    metadata["tokenizer.ggml.token_type"] = metadata["tokenizer.ggml.token_type"][:5]
    with pytest.raises(TokenizerError, match="token_type has 5 entries"):
        Tokenizer.from_gguf(metadata)


@pytest.mark.parametrize("key", ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                 "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id",
                                 "tokenizer.ggml.padding_token_id"])
@pytest.mark.parametrize("bad_id", [264, 100000, -1])
def test_special_ids_out_of_range_are_a_tokenizer_error(key, bad_id):
    with pytest.raises(TokenizerError, match=f"{key} = {bad_id} is out of range for a vocabulary of 264"):
        Tokenizer.from_gguf(_tiny_spm_metadata(**{key: bad_id}))


def test_missing_or_unknown_pieces_are_tokenizer_errors():
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model is missing"):
        Tokenizer.from_gguf({"tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(TokenizerError, match="'wordpiece' is not supported"):
        Tokenizer.from_gguf(_tiny_spm_metadata(**{"tokenizer.ggml.model": "wordpiece"}))
    with pytest.raises(TokenizerError, match="tokens is missing or empty"):
        Tokenizer.from_gguf(_tiny_spm_metadata(**{"tokenizer.ggml.tokens": []}))
    with pytest.raises(TokenizerError, match="merges is missing"):
        Tokenizer.from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b"]})


def test_character_without_byte_fallback_is_a_tokenizer_error():
    metadata = _tiny_spm_metadata()
    tokens = metadata["tokenizer.ggml.tokens"][:8]
    metadata.update({"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": metadata["tokenizer.ggml.scores"][:8],
                     "tokenizer.ggml.token_type": metadata["tokenizer.ggml.token_type"][:8]})
    tokenizer = Tokenizer.from_gguf(metadata)
    assert tokenizer.encode("ab a", add_special=False) == [6, 5, 6]  # "▁a" outscores "ab"
    with pytest.raises(TokenizerError, match="0xC3"):
        tokenizer.encode("é", add_special=False)


def test_tiny_vocabulary_merges_by_score():
    tokenizer = Tokenizer.from_gguf(_tiny_spm_metadata())
    # add_space_prefix defaults to true for SentencePiece: " ab" -> "▁ab" -> "▁a" (score of id 6) + "b"
    # because "▁a" (id 6) scores higher than "ab" (id 7) with scores falling with the id.
    assert tokenizer.encode("ab") == [1, 6, 5]
    assert tokenizer.decode([1, 6, 5], skip_special=True) == "ab"
