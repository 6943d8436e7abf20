"""Fuzz target: SmolLM2's tokenizer (edgesdk.tokenizer.Tokenizer.from_gguf on the cached model file).

Each input is read as UTF-8, invalid bytes becoming U+FFFD, so the text is valid Unicode. Then, with
and without special-token parsing:

- encode(text) gives the ids llama.cpp's tokenizer gives (the reference; llama-cpp-python is in the
  test extra);
- the streaming decoder's pieces join to decode(ids);
- decode(encode(text)) == text, for text the vocabulary can spell. SmolLM2's byte-level vocabulary has
  no token for the bytes 0x04, 0x06, 0x13, 0x14, 0x16, 0x1D, 0xF1 and 0xF2, so a character containing
  one (U+0004, ..., U+40000-U+BFFFF) loses those bytes in encode, exactly as in llama.cpp.

The input's bytes, read as little-endian uint16 ids, must decode or raise TokenizerError. Any other
exception, or a property above that fails, is a finding.

The model file comes from $EDGESDK_FUZZ_GGUF, else from the registry cache.
"""
from __future__ import annotations

import os

import _fuzz

with _fuzz.instrumented("edgesdk.tokenizer"):
    from edgesdk import registry
    from edgesdk.errors import EdgeSDKError
    from edgesdk.tokenizer import Tokenizer

import llama_cpp  # noqa: E402 - the reference, not instrumented
import llama_cpp._logger  # noqa: E402

MODEL = os.environ.get("EDGESDK_FUZZ_GGUF") or str(registry.cached_path("smollm2-135m-instruct"))
TOKENIZER = Tokenizer.from_gguf(MODEL)
llama_cpp._logger.set_verbose(False)
REFERENCE = llama_cpp.Llama(MODEL, vocab_only=True, verbose=False)
_SPELLABLE: "dict[str, bool]" = {}


def spellable(text: str) -> bool:
    """Whether every byte of text has a token: then, and only then, encoding loses nothing."""
    for char in set(text):
        known = _SPELLABLE.get(char)
        if known is None:
            known = _SPELLABLE[char] = TOKENIZER.decode(TOKENIZER.encode(char, add_special=False)) == char
        if not known:
            return False
    return True


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    exact = spellable(text)
    for parse_special in (False, True):
        ids = TOKENIZER.encode(text, add_special=False, parse_special=parse_special)
        reference = REFERENCE.tokenize(text.encode("utf-8"), add_bos=False, special=parse_special)
        assert ids == reference, (text, parse_special, ids, reference)
        decoded = TOKENIZER.decode(ids)
        stream = TOKENIZER.streaming_decoder()
        assert "".join(stream.push(i) for i in ids) + stream.flush() == decoded, (text, parse_special, ids)
        assert decoded == text or not exact, (text, parse_special, ids)
    ids = [int.from_bytes(data[i:i + 2], "little") for i in range(0, len(data) - 1, 2)]
    try:
        TOKENIZER.decode(ids)
    except EdgeSDKError:
        pass


if __name__ == "__main__":
    _fuzz.main(one_input)
