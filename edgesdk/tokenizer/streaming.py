"""Turning ids into text one at a time without ever emitting a broken UTF-8 sequence.

A token may carry only part of a character (byte tokens <0xF0> <0x9F> ... of an
emoji, or a byte-level BPE token that ends mid-character). push() returns only
complete characters and keeps the incomplete tail until the next token
completes it. Bytes that can never form a character are shown as U+FFFD, the
same way Tokenizer.decode shows them, so the streamed pieces always join to
exactly decode(ids).
"""
from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


class StreamDecoder:
    """Incremental detokenizer: push(id) -> newly complete text; flush() -> the rest."""

    def __init__(self, tokenizer: "Tokenizer", skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._at_start = True  # the first text piece may lose the space add_space_prefix put there

    def push(self, token_id: int) -> str:
        piece, self._at_start = self._tokenizer._piece(token_id, self._skip_special, self._at_start)
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """Whatever is held back (an incomplete character becomes U+FFFD); resets the decoder."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        self._at_start = True
        return text
