"""Pre-tokenizer splits for byte-level BPE, chosen by tokenizer.ggml.pre.

Each model family splits text into words with a regular expression before BPE
runs on each word; BPE never merges across words. The expressions are the
families' published ones. Two details decide exactness against llama.cpp:

- whitespace is Unicode's White_Space set, written out (\\s differs between
  regex engines: Python's re also counts U+001C..U+001F);
- some families apply several expressions in turn, each splitting the pieces
  of the previous one (SmolLM/StarCoder isolate every digit first). Where that
  is equivalent to one expression we use one (it is much faster); otherwise the
  pieces are split in turn, keeping unmatched text as pieces of its own.

We use the `regex` package for \\p{L}/\\p{N}/\\p{P}: Python's re has no Unicode
property classes.
"""
from __future__ import annotations

from typing import Callable, List

import regex

from ..errors import TokenizerError

_WS = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_S = f"[{_WS}]"
_NOT_S = f"[^{_WS}]"

# llama.cpp's character tables predate Unicode 16.0, whose new digits and punctuation are
# "other" to it; the `regex` package knows them. Found by comparing the two over every code
# point (the bench of scripts in tests/test_tokenizer_unicode.py checks them). New letters
# and symbols of 16.0 need no entry: a character llama.cpp does not know splits the same
# way as a letter or symbol it does not merge with.
_UNICODE_16_DIGITS = (r"\U00010D40-\U00010D49\U000116D0-\U000116E3\U00011BF0-\U00011BF9\U00011DE0-\U00011DE9"
                      r"\U00016130-\U00016139\U00016D70-\U00016D79\U00016FF4-\U00016FF6\U0001CCF0-\U0001CCF9"
                      r"\U0001E5F1-\U0001E5FA")
_UNICODE_16_PUNCTUATION = (r"\u1B4E\u1B4F\u1B7F\U00010D6E\U00010ED0\U000113D4\U000113D5\U000113D7\U000113D8"
                           r"\U00011BE1\U00016D6D-\U00016D6F\U0001E5FF")
# Unicode classes as llama.cpp sees them (patterns are compiled with regex.V1 for "--").
_L = r"\p{L}"
_N = rf"[\p{{N}}--[{_UNICODE_16_DIGITS}]]"
_P = rf"[\p{{P}}--[{_UNICODE_16_PUNCTUATION}]]"

# GPT-2: contractions, letters, numbers, other symbols, each with an optional leading space.
GPT2 = (rf"'s|'t|'re|'ve|'m|'ll|'d| ?{_L}+| ?{_N}+| ?[^{_WS}{_L}{_N}]+"
        rf"|{_S}+(?!{_NOT_S})|{_S}+")

# SmolLM / StarCoder: "\p{N}" first (every digit its own piece), then GPT-2 inside the pieces.
# Equivalent single expression: a digit is a piece, and a piece boundary before a digit
# counts as the end of text for the whitespace look-ahead.
DIGITS_THEN_GPT2 = (rf"{_N}|'s|'t|'re|'ve|'m|'ll|'d| ?{_L}+| ?[^{_WS}{_L}{_N}]+"
                    rf"|{_S}+(?![^{_WS}{_N}])|{_S}+")

# Llama-3: case-insensitive contractions, letters with one leading non-letter, up to three digits.
LLAMA3 = (rf"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n{_L}{_N}]?{_L}+"
          rf"|{_N}{{1,3}}| ?[^{_WS}{_L}{_N}]+[\r\n]*|{_S}*[\r\n]+|{_S}+(?!{_NOT_S})|{_S}+")

# Qwen2: as Llama-3 but single digits.
QWEN2 = (rf"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n{_L}{_N}]?{_L}+"
         rf"|{_N}| ?[^{_WS}{_L}{_N}]+[\r\n]*|{_S}*[\r\n]+|{_S}+(?!{_NOT_S})|{_S}+")

# llama.cpp's default for BPE vocabularies without a known pre-tokenizer: four expressions in turn.
DEFAULT_CHAIN = (
    rf"[{_P}\$\+<=>\^~\|]+",
    GPT2,
    rf"{_N}+",
    r"[0-9][0-9][0-9]",
)

# tokenizer.ggml.pre value -> one expression (str) or a chain (tuple) applied in turn.
PRE_TOKENIZERS = {
    "default": DEFAULT_CHAIN,
    "gpt-2": GPT2, "phi-2": GPT2, "mpt": GPT2, "olmo": GPT2, "jais": GPT2, "roberta-bpe": GPT2,
    "smollm": DIGITS_THEN_GPT2, "starcoder": DIGITS_THEN_GPT2, "refact": DIGITS_THEN_GPT2,
    "command-r": DIGITS_THEN_GPT2, "codeshell": DIGITS_THEN_GPT2, "exaone": DIGITS_THEN_GPT2,
    "minerva-7b": DIGITS_THEN_GPT2,
    "llama3": LLAMA3, "llama-v3": LLAMA3, "llama-bpe": LLAMA3, "falcon3": LLAMA3,
    "dbrx": LLAMA3, "smaug-bpe": LLAMA3, "chatglm-bpe": LLAMA3,
    "qwen2": QWEN2, "stablelm2": QWEN2, "megrez": QWEN2,
}


def _split_in_turn(patterns: List["regex.Pattern"]) -> Callable[[str], List[str]]:
    def split(text: str) -> List[str]:
        pieces = [text] if text else []
        for pattern in patterns:
            out: List[str] = []
            for piece in pieces:
                cursor = 0
                for match in pattern.finditer(piece):
                    start, end = match.span()
                    if start > cursor:
                        out.append(piece[cursor:start])
                    if end > start:
                        out.append(piece[start:end])
                    cursor = end
                if cursor < len(piece):
                    out.append(piece[cursor:])
            pieces = out
        return pieces
    return split


def pre_tokenizer(pre: str) -> Callable[[str], List[str]]:
    """The word splitter for a tokenizer.ggml.pre value (raises for unknown ones)."""
    spec = PRE_TOKENIZERS.get(pre)
    if spec is None:
        raise TokenizerError(
            f"tokenizer.ggml.pre = {pre!r} is not a pre-tokenizer we know; known: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    if isinstance(spec, str):
        return regex.compile(spec, regex.V1).findall
    return _split_in_turn([regex.compile(p, regex.V1) for p in spec])
