"""A reference for several sequences: sequence i is its own one-sequence backend (its own load of the model).

eval_batch evaluates the entries one after another and copy_seq moves KV state
with save_state/load_state, so nothing is batched and nothing is shared: slow,
but independent of any batched engine, which makes it the reference the
batching scheduler's bookkeeping (admission, chunks, prefix copies) is tested
against before a backend holds several sequences itself."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

import edgesdk
from edgesdk.backends.base import SeqInput, check_seq_inputs
from edgesdk.errors import InvalidArgumentError


class SequencesOfBackends:
    def __init__(self, backends: List):
        self.backends = backends
        self.n_ctx = backends[0].n_ctx
        self.n_vocab = backends[0].n_vocab
        self.copies: List[tuple] = []       # (src, dst, n) of every copy_seq, for the tests
        self.steps: List[List[SeqInput]] = []

    @property
    def n_seq(self) -> int:
        return len(self.backends)

    @property
    def n_past(self) -> int:
        return self.backends[0].n_past

    def eval(self, ids, start, all_logits=False):
        return self.backends[0].eval(ids, start, all_logits)

    def eval_batch(self, entries: Sequence[SeqInput]) -> List[np.ndarray]:
        check_seq_inputs(entries, self.n_seq)
        self.steps.append(list(entries))
        return [self.backends[e.seq].eval(e.ids, e.start) for e in entries]

    def seq_n_past(self, seq: int) -> int:
        return self.backends[seq].n_past

    def copy_seq(self, src: int, dst: int, n: int) -> None:
        if n > self.seq_n_past(src):
            raise InvalidArgumentError(f"sequence {src} holds {self.seq_n_past(src)} positions, not {n}")
        self.copies.append((src, dst, n))
        if src != dst:
            source = self.backends[src]
            self.backends[dst].load_state(source.save_state(), source.n_past)

    def info(self):
        return self.backends[0].info()

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def model_with_sequences(path, n_seq: int, **load_options) -> "edgesdk.Model":
    """A Model of `path` whose backend holds n_seq sequences, one load of the model each."""
    models = [edgesdk.load(str(path), **load_options) for _ in range(n_seq)]
    first = models[0]
    return edgesdk.Model(path=first.path, backend=SequencesOfBackends([m.backend for m in models]),
                         tokenizer=first.tokenizer, metadata=first.metadata, header=first._header,
                         name=first.name, special_tokens=first.special_tokens, config=first.config,
                         generation=first.generation)
