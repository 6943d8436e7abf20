"""Unicode character classes (letter, number, punctuation, whitespace) as llama.cpp sees them.

The pre-tokenizers split on \\p{L}, \\p{N}, \\p{P} and whitespace; the `regex`
package and llama.cpp each carry their own Unicode tables, of different
versions. Each code point is put in contexts where its class changes the
split (next to letters, digits, spaces, apostrophes, punctuation) and the ids
are compared with llama.cpp's: the Unicode 16.0 digits and punctuation listed
in pretokenize.py one by one, and a fixed sample of every plane.
"""
from __future__ import annotations

import re

import pytest

from edgesdk import gguf as edgesdk_gguf
from edgesdk.tokenizer import Tokenizer, pretokenize
from test_tokenizer_pretokenizers import _write_vocab_gguf

import llama_cpp

# Every SAMPLE_STRIDE-th code point of the whole range (a prime, so every block is hit
# at varying offsets); the full scan (stride 1) was run once and gave no difference.
SAMPLE_STRIDE = 31
CHUNK = 2048


def _probe(c: str) -> str:
    return f"a{c}b {c}1 {c}{c}\n'{c} x{c}  {c}\t!{c}!"


def _listed_code_points():
    out = []
    for listing in (pretokenize._UNICODE_16_DIGITS, pretokenize._UNICODE_16_PUNCTUATION):
        text = listing.encode().decode("unicode_escape")
        for match in re.finditer(r"(.)(?:-(.))?", text, re.S):
            first, last = match.group(1), match.group(2) or match.group(1)
            out.extend(range(ord(first), ord(last) + 1))
    return out


@pytest.fixture(scope="module", params=["smollm", "default"])
def pair(request, smollm2_path, tmp_path_factory):
    if request.param == "smollm":
        path = smollm2_path
    else:
        with edgesdk_gguf.open(smollm2_path) as opened:
            metadata = dict(opened.metadata)
        path = tmp_path_factory.mktemp("unicode") / "vocab-default.gguf"
        _write_vocab_gguf(path, metadata, "default")
    return Tokenizer.from_gguf(path), llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)


def _differing(tokenizer, reference, code_points):
    bad = []
    for start in range(0, len(code_points), CHUNK):
        chunk = code_points[start:start + CHUNK]
        text = "".join(_probe(chr(c)) for c in chunk)
        if tokenizer.encode(text, add_special=False) == reference.tokenize(text.encode(), add_bos=False, special=False):
            continue
        for c in chunk:
            text = _probe(chr(c))
            if tokenizer.encode(text, add_special=False) != reference.tokenize(text.encode(), add_bos=False,
                                                                              special=False):
                bad.append(hex(c))
    return bad


@pytest.mark.models
def test_unicode_16_digits_and_punctuation_split_as_in_llamacpp(pair):
    tokenizer, reference = pair
    listed = _listed_code_points()
    assert len(listed) == 107
    neighbours = sorted({c + d for c in listed for d in (-1, 1)} - set(listed))
    assert _differing(tokenizer, reference, listed + neighbours) == []


@pytest.mark.models
@pytest.mark.slow
def test_sampled_code_points_split_as_in_llamacpp(pair):
    tokenizer, reference = pair
    sample = [c for c in range(0, 0x110000, SAMPLE_STRIDE) if not 0xD800 <= c <= 0xDFFF]
    assert _differing(tokenizer, reference, sample) == []
