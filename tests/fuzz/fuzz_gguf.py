"""Fuzz target: edgesdk.gguf.open on arbitrary bytes, then every tensor view, and the tokenizer of a
file that has a vocabulary.

Only edgesdk.errors.EdgeSDKError (ModelFormatError, TokenizerError, ...) may come out; anything else
(IndexError, struct.error, OverflowError, MemoryError, RecursionError, ...) is a finding.
"""
from __future__ import annotations

import os
import tempfile

import _fuzz

with _fuzz.instrumented("edgesdk.gguf", "edgesdk.tokenizer"):
    from edgesdk import gguf
    from edgesdk.errors import EdgeSDKError, ModelFormatError
    from edgesdk.tokenizer import Tokenizer

# One file, rewritten for every input: gguf.open reads a path (it memory-maps the file).
_FD, PATH = tempfile.mkstemp(prefix="edgesdk-fuzz-", suffix=".gguf")
os.close(_FD)


def one_input(data: bytes) -> None:
    with open(PATH, "wb") as f:
        f.write(data)
    try:
        with gguf.open(PATH) as opened:
            for name, info in opened.tensors.items():
                assert len(opened.tensor_data(name)) == info.nbytes, name
                try:
                    opened.tensor_array(name)
                except ModelFormatError:
                    pass                    # a block-quantized type: tensor_data() is the way
            if "tokenizer.ggml.model" in opened.metadata:
                tokenizer = Tokenizer.from_gguf(opened)
                tokenizer.decode(tokenizer.encode("fuzz é 日本 🚀", parse_special=True))
    except EdgeSDKError:
        pass


if __name__ == "__main__":
    try:
        _fuzz.main(one_input)
    finally:
        os.unlink(PATH)
