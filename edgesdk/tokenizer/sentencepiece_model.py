"""Models shipped as a SentencePiece .model file: encoded by the sentencepiece library itself.

The vocabulary (pieces, scores, types) is read from the model so that special
tokens, BOS/EOS and decoding behave as for a GGUF vocabulary; raw text is
encoded by sentencepiece's own processor, so every SentencePiece model type
(unigram, BPE, with its normalizer) is exact by construction.
"""
from __future__ import annotations

import os
from typing import List, Tuple, Union

from ..errors import TokenizerError
from .spm import SPACE_MARK
from .vocab import (ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_UNUSED,
                    END_OF_GENERATION_TEXTS, MODEL_SPM, Vocab)


class SentencePieceLibraryModel:
    """Raw text -> ids through sentencepiece.SentencePieceProcessor."""

    def __init__(self, processor, vocab: Vocab):
        self.processor = processor
        self.vocab = vocab

    def encode(self, text: str, after_special: bool = True) -> List[int]:
        return list(self.processor.encode(text))

    def token_bytes(self, token_id: int) -> bytes:
        attr = self.vocab.attrs[token_id]
        text = self.vocab.tokens[token_id]
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            return text.encode("utf-8")
        if attr & ATTR_UNUSED:
            return b""
        return text.replace(SPACE_MARK, " ").encode("utf-8")


def load_sentencepiece(path: Union[str, os.PathLike]) -> Tuple[Vocab, SentencePieceLibraryModel]:
    try:
        import sentencepiece
    except ImportError:
        raise TokenizerError("the sentencepiece package is needed for .model files: pip install sentencepiece") from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TokenizerError(f"SentencePiece model {path!r} does not exist")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(path)
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(f"{path}: not a SentencePiece model ({exc})") from None
    n = processor.GetPieceSize()
    tokens, attrs, scores = [], [], []
    for i in range(n):
        tokens.append(processor.IdToPiece(i))
        scores.append(float(processor.GetScore(i)))
        if processor.IsByte(i):
            attrs.append(ATTR_BYTE)
        elif processor.IsControl(i):
            attrs.append(ATTR_CONTROL)
        elif processor.IsUnknown(i):
            attrs.append(ATTR_UNKNOWN)
        elif processor.IsUnused(i):
            attrs.append(ATTR_UNUSED)
        else:
            attrs.append(ATTR_NORMAL)
    add_space_prefix = True
    try:
        from sentencepiece import sentencepiece_model_pb2
        proto = sentencepiece_model_pb2.ModelProto()
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
        add_space_prefix = bool(proto.normalizer_spec.add_dummy_prefix)
        for i, piece in enumerate(proto.pieces):
            if piece.type == sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED:
                # sentencepiece matches user-defined pieces itself; keep them out of our splitter
                attrs[i] = ATTR_NORMAL
    except ImportError:
        pass
    token_to_id = {t: i for i, t in enumerate(tokens)}
    bos = processor.bos_id()
    eos = processor.eos_id()
    unk = processor.unk_id()
    eog = {eos} if eos >= 0 else set()
    eog.update(token_to_id[t] for t in END_OF_GENERATION_TEXTS if t in token_to_id)
    vocab = Vocab(
        model=MODEL_SPM, pre="default", tokens=tokens, attrs=attrs, scores=scores, merges=None,
        bos_id=bos if bos >= 0 else None, eos_id=eos if eos >= 0 else None, eot_id=None,
        unk_id=unk if unk >= 0 else None, add_bos=bos >= 0, add_eos=False,
        add_space_prefix=add_space_prefix, token_to_id=token_to_id, eog_ids=frozenset(eog),
    )
    return vocab, SentencePieceLibraryModel(processor, vocab)
