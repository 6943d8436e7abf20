"""The streaming decoder never emits a broken UTF-8 sequence and joins to exactly decode(ids)."""
from __future__ import annotations

import pytest

from edgesdk.tokenizer import StreamDecoder, Tokenizer
from tokenizer_corpus import build_corpus

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def tokenizer(request):
    return Tokenizer.from_gguf(request.getfixturevalue(f"{request.param}_path"))


def _stream(tokenizer: Tokenizer, ids, skip_special=False):
    decoder = tokenizer.streaming_decoder(skip_special=skip_special)
    assert isinstance(decoder, StreamDecoder)
    pieces = [decoder.push(i) for i in ids]
    return pieces, decoder.flush()


@pytest.mark.models
def test_emoji_split_across_byte_tokens_is_held_until_complete(gemma3_path):
    tokenizer = Tokenizer.from_gguf(gemma3_path)
    # A private-use plane-15 character has no token of its own: it becomes 4 byte tokens.
    text = "a\U000F0041b"
    ids = tokenizer.encode(text, add_special=False)
    byte_ids = [tokenizer.vocab.token_to_id[f"<0x{b:02X}>"] for b in "\U000F0041".encode("utf-8")]
    assert byte_ids == ids[1:5]
    pieces, rest = _stream(tokenizer, ids)
    assert pieces[1:4] == ["", "", ""]           # nothing while the character is incomplete
    assert pieces[4] == "\U000F0041"             # all of it when the last byte arrives
    assert "".join(pieces) + rest == text


@pytest.mark.models
def test_byte_level_tokens_that_end_mid_character_are_held(smollm2_path):
    tokenizer = Tokenizer.from_gguf(smollm2_path)
    ids = tokenizer.encode("👨\u200d👩\u200d👧 family 😀🎉", add_special=False)
    pieces, rest = _stream(tokenizer, ids)
    assert any(p == "" for p in pieces), "expected at least one token ending inside a character"
    for piece in pieces:
        assert REPLACEMENT not in piece
        piece.encode("utf-8")  # every emitted piece is complete, valid text
    assert "".join(pieces) + rest == tokenizer.decode(ids)


@pytest.mark.models
def test_streamed_text_equals_decode_on_the_corpus(tokenizer):
    for text in build_corpus([], n_random=200, n_mixed=100):
        ids = tokenizer.encode(text, parse_special=True)
        for skip_special in (False, True):
            pieces, rest = _stream(tokenizer, ids, skip_special)
            assert "".join(pieces) + rest == tokenizer.decode(ids, skip_special=skip_special), text


@pytest.mark.models
def test_incomplete_tail_becomes_one_replacement_character_on_flush(gemma3_path):
    tokenizer = Tokenizer.from_gguf(gemma3_path)
    first_two = [tokenizer.vocab.token_to_id[f"<0x{b:02X}>"] for b in "😀".encode("utf-8")[:2]]
    decoder = tokenizer.streaming_decoder()
    assert [decoder.push(i) for i in first_two] == ["", ""]
    assert decoder.flush() == REPLACEMENT
    assert tokenizer.decode(first_two) == REPLACEMENT
    # After flush the decoder starts clean.
    assert decoder.push(tokenizer.encode("ok", add_special=False)[0]) == "ok"
