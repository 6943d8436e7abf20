"""Offline tokenizers from the model file: byte-level BPE and SentencePiece, streaming-safe decoding.

    tok = Tokenizer.from_gguf(path)
    ids = tok.encode("Hello")               # BOS/EOS as the model's metadata says
    text = tok.decode(ids)
    stream = tok.streaming_decoder()        # push(id) -> complete UTF-8 text only
"""
from .streaming import StreamDecoder
from .tokenizer import Tokenizer

__all__ = ["Tokenizer", "StreamDecoder"]
