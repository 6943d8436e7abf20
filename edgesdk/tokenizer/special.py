"""Splitting text at special-token strings before the subword model sees it.

The rule (llama.cpp's, which our ids must equal): special tokens are taken
longest text first; each one claims, left to right, every occurrence that lies
wholly in text not yet claimed. Control and unknown tokens take part only when
special parsing is on; user-defined tokens always do (so a vocabulary's
whitespace-run or markup tokens come out whole, as the model was trained).

Finding occurrences is the costly part with large vocabularies (Gemma has
~6,400 special strings), so candidates are located with one compiled regex over
the distinct two-character prefixes, then checked by exact lookups.
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple, Union

from .vocab import ATTR_CONTROL, ATTR_UNKNOWN, ATTR_USER_DEFINED

# A fragment is either raw text (str) or a token id (int).
Fragment = Union[str, int]


class SpecialMatcher:
    """Occurrences of a set of special-token strings in text, and the partition llama.cpp makes."""

    def __init__(self, texts_and_ids: Sequence[Tuple[str, int]]):
        # Priority: longer UTF-8 text first; equal lengths by id (llama.cpp's sort is unstable
        # there; equal-length special strings that overlap in one text do not occur in practice).
        ordered = sorted(texts_and_ids, key=lambda ti: (-len(ti[0].encode("utf-8")), ti[1]))
        self.rank: Dict[str, int] = {}
        self.id_of: Dict[str, int] = {}
        for text, token_id in ordered:
            if text and text not in self.rank:
                self.rank[text] = len(self.rank)
                self.id_of[text] = token_id
        self.lengths_by_prefix: Dict[str, List[int]] = {}
        for text in self.rank:
            prefix = text[:2]
            lengths = self.lengths_by_prefix.setdefault(prefix, [])
            if len(text) not in lengths:
                lengths.append(len(text))
        self._finder = None
        if self.rank:
            prefixes = sorted(self.lengths_by_prefix, key=len, reverse=True)
            self._finder = re.compile("(?=(" + "|".join(re.escape(p) for p in prefixes) + "))", re.S)

    def __bool__(self) -> bool:
        return bool(self.rank)

    def partition(self, text: str) -> List[Fragment]:
        """Split text into raw-text pieces and special-token ids, in order."""
        if not self.rank or not text:
            return [text] if text else []
        occurrences: Dict[str, List[int]] = {}
        rank = self.rank
        lengths_by_prefix = self.lengths_by_prefix
        for match in self._finder.finditer(text):
            pos = match.start()
            prefix = match.group(1)
            for length in lengths_by_prefix[prefix]:
                # Near the end of text the slice is shorter than length; if it is then a token,
                # it is found again at its own length, and duplicates are dropped below.
                candidate = text[pos:pos + length]
                if candidate in rank:
                    if candidate in occurrences:
                        occurrences[candidate].append(pos)
                    else:
                        occurrences[candidate] = [pos]
            # A one-character token's prefix is itself; a longer prefix at the same place hides it.
            if len(prefix) == 2 and prefix[0] in rank:
                occurrences.setdefault(prefix[0], []).append(pos)
        if not occurrences:
            return [text]
        claimed = bytearray(len(text))
        accepted: List[Tuple[int, int, int]] = []  # (start, end, token id)
        for token_text in sorted(occurrences, key=rank.__getitem__):
            length = len(token_text)
            last_end = -1
            for pos in sorted(set(occurrences[token_text])):
                if pos < last_end:
                    continue
                if claimed.find(1, pos, pos + length) != -1:
                    continue
                claimed[pos:pos + length] = b"\x01" * length
                accepted.append((pos, pos + length, self.id_of[token_text]))
                last_end = pos + length
        accepted.sort()
        fragments: List[Fragment] = []
        cursor = 0
        for start, end, token_id in accepted:
            if start > cursor:
                fragments.append(text[cursor:start])
            fragments.append(token_id)
            cursor = end
        if cursor < len(text):
            fragments.append(text[cursor:])
        return fragments


def build_matchers(tokens: Sequence[str], attrs: Sequence[int]) -> Tuple[SpecialMatcher, SpecialMatcher]:
    """(always, with_special): user-defined tokens that are not also control/unknown (a
    user-defined token can gain the control attribute, see vocab.py); and all of them."""
    always = [(t, i) for i, (t, a) in enumerate(zip(tokens, attrs))
              if a & ATTR_USER_DEFINED and not a & (ATTR_CONTROL | ATTR_UNKNOWN)]
    every = [(t, i) for i, (t, a) in enumerate(zip(tokens, attrs))
             if a & (ATTR_USER_DEFINED | ATTR_CONTROL | ATTR_UNKNOWN)]
    return SpecialMatcher(always), SpecialMatcher(every)
