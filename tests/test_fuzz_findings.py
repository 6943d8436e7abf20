"""Regression tests for what fuzzing (tests/test_fuzz.py) found; the inputs are also in tests/fuzz/corpus/
as finding-*, so the fuzzers start from them."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgesdk.tokenizer import Tokenizer

CORPUS = Path(__file__).parent / "fuzz" / "corpus"
# The bytes SmolLM2's byte-level vocabulary has no token for (found by the tokenizer target: a text
# with U+0004 did not survive encode/decode).
SMOLLM2_UNSPELLABLE_BYTES = {0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1, 0xF2}


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    import llama_cpp  # the reference

    return Tokenizer.from_gguf(smollm2_path), llama_cpp.Llama(str(smollm2_path), vocab_only=True, verbose=False)


@pytest.mark.models
def test_bytes_smollm2_has_no_token_for_are_dropped_as_llama_cpp_drops_them(smollm2):
    tokenizer, reference = smollm2
    text = (CORPUS / "tokenizer" / "finding-unspellable-bytes.bin").read_bytes().decode("utf-8", "replace")
    ids = tokenizer.encode(text, add_special=False)
    assert ids == reference.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    assert tokenizer.decode(ids) == text.replace("\x04", "")


def _char_containing(byte: int):
    """A character whose UTF-8 encoding contains byte; None for bytes UTF-8 never uses."""
    if byte < 0x80:
        return chr(byte)
    if byte < 0xC0:                                     # a continuation byte, after C2
        return bytes([0xC2, byte]).decode("utf-8")
    if byte in (0xC0, 0xC1) or byte > 0xF4:
        return None
    second = {0xE0: 0xA0, 0xF0: 0x90}.get(byte, 0x80)   # the smallest that makes a valid sequence
    length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
    return bytes([byte, second] + [0x80] * (length - 2)).decode("utf-8")


@pytest.mark.models
def test_smollm2_spells_every_byte_but_the_eight_its_vocabulary_lacks(smollm2):
    tokenizer, reference = smollm2
    for byte in range(256):
        char = _char_containing(byte)
        if char is None:
            continue
        ids = tokenizer.encode(char, add_special=False)
        assert ids == reference.tokenize(char.encode("utf-8"), add_bos=False, special=False), hex(byte)
        lossless = not set(char.encode("utf-8")) & SMOLLM2_UNSPELLABLE_BYTES
        assert (tokenizer.decode(ids) == char) == lossless, hex(byte)
