"""How far an engine's logits stray from the truth (tests/truth_forward.py), and the texts measured on.

Public API used across the tests: fidelity(truth_logits, other_logits) -> Fidelity, the
texts (PROSE, CODE: at least 512 tokens each for both real models' tokenizers; long_prose()
for perplexity), native_logits(...) for our engine's teacher-forced logits, and perplexity(),
which takes any engine's logits_from (truth_forward.truth_logits_from,
llamacpp_ref.llama_logits_from, native_logits_from here).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from edgesdk import _native
from edgesdk.backends.native import NativeBackend

FIDELITY_ROWS = 64  # rows turned into float64 at a time: 64 x 262144 x 8 B = 128 MiB for Gemma-3

# How much less faithful than llama.cpp an engine may measure and still be called as faithful
# (issue 14): both sit on the same noise floor (8-bit activations, f32 sums), so neither can be
# held to the other exactly.
# Mean KL (nats): one bifurcating position can carry a 512-position mean. Measured: Gemma-3 code,
# position 19, where rounding-level changes to attention moved that one position's KL between
# 0.0065 and 0.78 (0.033 AVX-512, 0.44 scalar, 0.78 AVX2), i.e. the mean by up to 0.0015, while
# the median position moved by under 2%. Elsewhere native minus llama.cpp measured -0.0006 to +0.0002.
KL_TOLERANCE = 0.002
# ... so the median position's KL carries the systematic check the mean cannot: a kernel that is
# a little wrong everywhere moves every position. Measured native / llama.cpp medians: 0.82-1.05
# on a Sapphire Rapids box; on an AVX2-only EPYC, SmolLM2 code, our scalar and AVX2 paths (the same
# activation bytes, f32 sums in different orders) measured medians 0.00113 and 0.00144 against
# llama.cpp's 0.00122: summation order alone moves this text's median by 27%. A faulty kernel
# (a wrong RoPE, a broken dot product) moves it by multiples.
MEDIAN_KL_MAX_RATIO = 1.30
# Top-1 agreement with the truth may be this fraction of positions lower (13 of 512). Top-1 over
# all positions counts near-ties, which rounding decides: our own paths, which differ only in f32
# summation order (AVX2, AVX-512, K-quants repacked or in the file layout), span 0.947-0.973 on
# Gemma-3 prose, 14 positions apart, with llama.cpp at 0.961 in between. A real fault (a wrong
# RoPE, a broken kernel) costs far more, and shows in the KL as well.
TOP1_TOLERANCE = 0.025


@dataclass(frozen=True)
class Fidelity:
    mean_kl: float   # mean over positions of KL(softmax(truth) || softmax(other)), nats
    top1: float      # fraction of positions where the argmaxes agree
    n: int           # positions compared
    median_kl: float = 0.0   # the median position's KL: blind to the few positions that bifurcate

    def __str__(self) -> str:
        return (f"mean KL {self.mean_kl:.5f} (median {self.median_kl:.5f}), top-1 {self.top1:.4f} "
                f"over {self.n} positions")


def assert_as_faithful_as(ours: Fidelity, reference: Fidelity) -> None:
    """AssertionError naming the measure when `ours` strays from the truth further than
    `reference` (llama.cpp on the same tokens) beyond the tolerances above."""
    assert ours.mean_kl <= reference.mean_kl + KL_TOLERANCE, f"mean KL: {ours} against {reference}"
    assert ours.median_kl <= reference.median_kl * MEDIAN_KL_MAX_RATIO, f"median KL: {ours} against {reference}"
    assert ours.top1 >= reference.top1 - TOP1_TOLERANCE, f"top-1: {ours} against {reference}"


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def fidelity(truth_logits, other_logits) -> Fidelity:
    """How far other_logits (n, n_vocab) stray from truth_logits (n, n_vocab), FIDELITY_ROWS rows
    at a time in float64 (either may be any float array, or anything sliced by rows into one)."""
    n = len(truth_logits)
    if len(other_logits) != n:
        raise ValueError(f"{n} rows of truth against {len(other_logits)} rows of the other engine")
    kls, agree = [], 0
    for r0 in range(0, n, FIDELITY_ROWS):
        p = np.asarray(truth_logits[r0:r0 + FIDELITY_ROWS], dtype=np.float64)
        q = np.asarray(other_logits[r0:r0 + FIDELITY_ROWS], dtype=np.float64)
        if p.shape != q.shape:
            raise ValueError(f"rows {r0}..: truth {p.shape} against {q.shape}")
        lp, lq = log_softmax(p), log_softmax(q)
        kls.append((np.exp(lp) * (lp - lq)).sum(axis=-1))
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
    kl = np.concatenate(kls)
    return Fidelity(float(kl.mean()), agree / n, n, float(np.median(kl)))


# ------------------------------------------------------------------ texts

PROSE = """The harbour town woke slowly that autumn. Fishermen carried their nets down the narrow
streets before dawn, and the smell of bread drifted from the bakery on the corner. Mara, who had
kept the lighthouse for eleven years, watched the boats leave one by one and counted them, as she
always did, in a small notebook with a cracked leather cover.

Nobody in the town remembered exactly when the storms had begun to change. The older people said
the winters used to be colder and the summers shorter, but that the sea had been kinder. Now the
wind came from the south in October, warm and restless, and it pushed the waves over the old stone
wall that protected the market square. The council had argued for three years about building a new
wall, and in the end they had decided to wait.

Mara did not like waiting. In the evenings she read about engineering, about how the Dutch had
held back the North Sea and how the Venetians had built their city on wooden piles driven into the
mud. She wrote letters to the council with drawings of sea walls, breakwaters and tidal gates. Most
of the letters went unanswered, but one afternoon a young engineer from the capital knocked on the
lighthouse door with one of her drawings folded in his pocket.

"You made a mistake in the foundations," he said, smiling, "but the idea is good. Show me where the
water comes in." They walked along the shore until the light faded, talking about currents,
concrete, money and the patience of small towns.
The engineer, whose name was Tomas, stayed for a week. Each morning he measured the depth of the
water at the harbour mouth with a weighted rope, and each afternoon he sat at Mara's kitchen table
and turned her sketches into careful plans. He explained that a wall alone would only move the
problem along the coast; the waves had to be slowed before they arrived, by a reef of broken rock
laid a hundred metres out, where the sea floor rose towards the old sandbank.

The council listened politely when he presented the plans, and then asked how much it would cost.
Tomas named a figure, and the room went quiet. The mayor, a careful man who owned the hardware
shop, said that the town could not borrow so much without selling the school playing field, and
that nobody would vote for that. A fisherman at the back of the hall stood up and said that the
playing field would be under water in ten years anyway, so they might as well sell it now.

In the weeks that followed, the argument spread from the council chamber to the café, the church
steps and the queue at the post office. Children drew pictures of the reef at school. The baker
put a jar on his counter with a handwritten label that read "For the rocks", and by the end of the
month it held more coins than anyone expected, together with a button, two foreign stamps and a
note that promised a day's work with a tractor.

Mara wrote to Tomas about the jar, half as a joke. He replied with a long letter about a village in
the north that had built its own breakwater with volunteers, donated stone and a borrowed crane.
It had taken them four summers. The first winter storm after it was finished had broken against
the rocks and spent itself there, and the harbour behind had stayed as calm as a pond. The village
still held a festival every year on the day the last stone was placed.

When the council met again in the spring, Mara brought the letter with her and read it aloud. She
was not used to speaking in public, and her voice shook at first, but by the end of the second page
the hall was silent and attentive. The vote was close. The reef would be built, not all at once,
but a section each summer, with the town's own boats carrying the stone.
"""

CODE = '''import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Dict, List, Optional, Tuple


@dataclass
class Inventory:
    """Items in a warehouse, counted by name."""
    counts: Dict[str, int] = field(default_factory=dict)

    def add(self, name: str, quantity: int = 1) -> None:
        if quantity <= 0:
            raise ValueError(f"quantity must be positive, got {quantity}")
        self.counts[name] = self.counts.get(name, 0) + quantity

    def remove(self, name: str, quantity: int = 1) -> bool:
        have = self.counts.get(name, 0)
        if have < quantity:
            return False
        if have == quantity:
            del self.counts[name]
        else:
            self.counts[name] = have - quantity
        return True

    def most_common(self, n: int = 3) -> List[str]:
        ranked = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return [name for name, _ in ranked[:n]]

    def to_json(self) -> str:
        return json.dumps(self.counts, sort_keys=True, indent=2)


def load(path: str) -> Optional[Inventory]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return None
    inventory = Inventory()
    for name, quantity in data.items():
        inventory.add(name, int(quantity))
    return inventory


class RateLimiter:
    """Allows at most `limit` events in any window of `period` seconds."""

    def __init__(self, limit: int, period: float, clock=None) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self.clock = clock or time.monotonic
        self.events: Deque[float] = deque()

    def allow(self) -> bool:
        now = self.clock()
        while self.events and now - self.events[0] >= self.period:
            self.events.popleft()
        if len(self.events) < self.limit:
            self.events.append(now)
            return True
        return False

    def wait_time(self) -> float:
        if len(self.events) < self.limit:
            return 0.0
        return max(0.0, self.period - (self.clock() - self.events[0]))


def parse_line(line: str) -> Tuple[str, int]:
    """Parse 'name: quantity' into a pair; raise ValueError on anything else."""
    name, sep, rest = line.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"expected 'name: quantity', got {line!r}")
    return name.strip(), int(rest.strip())


def merge(first: Inventory, second: Inventory) -> Inventory:
    merged = Inventory(dict(first.counts))
    for name, quantity in second.counts.items():
        merged.add(name, quantity)
    return merged


def main(argv: List[str]) -> int:
    if len(argv) < 2:
        print("usage: inventory FILE [FILE ...]", file=sys.stderr)
        return 2
    total = Inventory()
    for path in argv[1:]:
        inventory = load(path)
        if inventory is None:
            print(f"warning: {path} not found", file=sys.stderr)
            continue
        total = merge(total, inventory)
    for name in total.most_common(5):
        print(f"{name:20s} {total.counts[name]:6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
'''


def long_prose(n_sentences: int = 600, seed: int = 11) -> str:
    """Varied English prose composed from parts (a seeded mix, no exact repeats)."""
    rng = np.random.default_rng(seed)
    subjects = ["The old teacher", "A young doctor", "My neighbour", "The river", "Our small team", "The city council",
                "A tired traveller", "The scientist", "Her brother", "The quiet engineer", "The market", "A stray dog"]
    verbs = ["remembered", "discovered", "carried", "described", "ignored", "repaired", "followed", "painted",
             "measured", "questioned", "borrowed", "explained"]
    objects = ["the broken bridge", "a letter from the north", "the price of bread", "an unusual map",
               "the history of the valley", "a song about winter", "the results of the experiment",
               "a basket of apples", "the rules of the game", "the last train home", "a box of old photographs"]
    tails = ["before the sun went down.", "while everyone else was asleep.", "and nobody noticed.",
             "because it seemed important.", "without saying a word.", "during the long summer of that year.",
             "as the rain began to fall.", "in front of the whole village.", "for the third time that week."]
    joins = ["Later,", "Meanwhile,", "However,", "At first,", "Surprisingly,", "Every morning,", "Soon after,"]
    sentences = []
    for i in range(n_sentences):
        head = f"{joins[rng.integers(len(joins))]} {subjects[rng.integers(len(subjects))].lower()}" \
            if rng.random() < 0.3 else subjects[rng.integers(len(subjects))]
        sentences.append(f"{head} {verbs[rng.integers(len(verbs))]} {objects[rng.integers(len(objects))]} "
                         f"{tails[rng.integers(len(tails))]}")
        if rng.random() < 0.15:
            sentences.append("\n\n")
    return " ".join(sentences)



def first_tokens(tokenize: Callable[[bytes], list], text: str, n: int) -> list:
    """The first n token ids of text; AssertionError naming the count when it is shorter."""
    ids = tokenize(text.encode())
    assert len(ids) >= n, f"text too short: {len(ids)} tokens, {n} needed"
    return list(ids[:n])


# ------------------------------------------------------------- perplexity

def nll_sum(logits, targets) -> float:
    """-sum_i log softmax(logits[i])[targets[i]], a float64 chunk of FIDELITY_ROWS rows at a time
    (logits may be any float array, or anything sliced by rows into one, with at least
    len(targets) rows)."""
    total = 0.0
    for r0 in range(0, len(targets), FIDELITY_ROWS):
        t = np.asarray(targets[r0:r0 + FIDELITY_ROWS])
        x = np.array(logits[r0:r0 + t.size], dtype=np.float64)
        picked = x[np.arange(t.size), t]
        peak = x.max(axis=-1)
        x -= peak[:, None]
        np.exp(x, out=x)
        total += float((peak + np.log(x.sum(axis=-1)) - picked).sum())
    return total


def perplexity(logits_from, ids, window: int) -> float:
    """exp(mean NLL) over consecutive windows of `window` tokens, scoring each window's second half.

    logits_from(window_ids, first) returns rows of logits for positions first.. of the window
    evaluated from position 0; each window's rows are reduced to NLLs before the next one
    (Gemma-3's 262k vocabulary makes one window of float64 logits gigabytes)."""
    nll, count = 0.0, 0
    first = window // 2
    for w0 in range(0, len(ids) - window + 1, window):
        window_ids = list(ids[w0:w0 + window])
        targets = window_ids[first + 1:]
        nll += nll_sum(logits_from(window_ids, first), targets)
        count += len(targets)
    return float(np.exp(nll / count))


# ------------------------------------------------------------------ our engine

def native_logits(backend: NativeBackend, ids: Sequence[int]) -> np.ndarray:
    """(len(ids), n_vocab) float32 teacher-forced logits from position 0, one batched eval."""
    return backend.eval(list(ids), 0, all_logits=True)


def native_logits_from(backend: NativeBackend):
    """logits_from(window, first) for perplexity()."""
    def logits_from(window, first):
        backend.eval(window[:first], 0)  # the first half's logits are not scored
        return backend.eval(window[first:], first, all_logits=True)
    return logits_from


@contextlib.contextmanager
def forced_isa(isa: str):
    """Kernels of `isa` for everything run inside (as EDGESDK_ISA does at start-up)."""
    before = _native.isa_current()
    _native.isa_set(isa)
    try:
        yield
    finally:
        _native.isa_set(before)
