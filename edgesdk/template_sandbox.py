"""The sandbox a chat template compiles and renders in: Jinja's immutable sandbox, narrowed and bounded.

A chat template comes from a downloaded model file and is hostile until proven
otherwise. It gets Jinja2's ImmutableSandboxedEnvironment (no attribute
starting with "_", no mutation of lists/dicts, no unsafe callables), and on
top of that:

- a deadline: a trace function checks the time on every line Jinja and the
  compiled template run, so loops cannot run for ever;
- a cap on the rendered text (MAX_RENDER_CHARS), checked while rendering;
- bounds on everything a template builds, checked before it is built, so that
  no single C call (which the deadline cannot interrupt) and no accumulation
  of values can take more than a few tens of MiB or run for long.

Three numbers bound what a render builds:

- MAX_VALUE_SIZE: the size of one value. A string counts its characters; a
  list, tuple or dict counts its items plus the size of each item, through
  every reference, so a list holding one long string a thousand times counts
  that string a thousand times: comparing, hashing, printing or serialising
  it costs that much, in one C call the deadline cannot interrupt.
- MAX_RENDER_WORK_BYTES: the memory one render may allocate in all, charged
  as each string or structure is made and never given back, so nothing a
  template keeps (in a loop, a namespace, a recursion) can add up past it.
- MAX_INT_BITS: the size of an integer, so that arithmetic stays fast.

What a template can reach is an allow-list: the str, dict, list and tuple
methods in _STR_METHODS, _DICT_METHODS and _SEQUENCE_METHODS, the attributes
of Jinja's loop, namespace and cycler objects, the filters in _FILTERS and
the globals of _new_environment. Anything else (bytes, int methods such as
to_bytes, str.translate, lipsum, pprint, urlize, wordwrap, xmlattr, the
{% autoescape %} tag) is refused or does not exist. Markup never appears:
with autoescaping off, `safe` and `escape` return plain strings, the same
text as before.

Any failure is a TemplateError saying what happened.
"""
from __future__ import annotations

import copy
import json
import math
import operator
import re
import sys
import time
import types
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Dict, Optional, Tuple

import markupsafe
from jinja2 import Template, TemplateSyntaxError, nodes, pass_context, pass_environment, pass_eval_context
from jinja2.compiler import CodeGenerator, optimizeconst
from jinja2.defaults import DEFAULT_FILTERS
from jinja2.exceptions import FilterArgumentError, SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.filters import make_attrgetter
from jinja2.runtime import BlockReference, LoopContext, TemplateReference, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Cycler, Namespace

from .errors import TemplateError

RENDER_TIME_LIMIT_S = 2.0            # real templates render in milliseconds
_TEMPLATE_FILE = "<template>"        # the file name Jinja compiles a template from a string under
MAX_RENDER_CHARS = 4 << 20           # far above any context window's worth of text

# Real chat templates, tool-calling ones included, are under 16 KB. Compiling costs ~20 us and ~1.5 KB
# a character of dense template on x86: this bounds it to ~1.5 s and ~100 MB.
MAX_TEMPLATE_CHARS = 64 << 10
MAX_VALUE_SIZE = MAX_RENDER_CHARS  # a value larger than the output cap has no place in a prompt
# Real templates allocate 1-6 bytes per output character (tests/test_template_sandbox.py), so this fits
# a render at the output cap; a hostile one peaks at about this plus one value.
MAX_RENDER_WORK_BYTES = 32 << 20
MAX_FORMAT_WIDTH = 100_000         # a width/precision in a format string, or a padding argument
MAX_INT_BITS = 4096                # indices and counts need 64; multiplying two of these takes microseconds
MAX_INT_TEXT_CHARS = 4300          # Python's default int <-> str digit limit, enforced here whatever the process set
MAX_ROUND_DIGITS = 400             # beyond the 324 decimal places a float has
# Tool schemas nest a dozen levels. CPython hashes a tuple by recursing in C with no depth check, so a
# tuple nested ~100,000 deep, which a loop can build in a second, crashes the interpreter.
MAX_NESTING_DEPTH = 100
MAX_STRFTIME_FORMAT_CHARS = 256    # strftime output is at most 256x its format (CPython's buffer rule)

_STR_BYTES = sys.getsizeof("")               # a str object with no characters
_CHAR_OBJECT_BYTES = sys.getsizeof("\u65e5") + 8   # a one-character str CPython does not cache, and its pointer
_POINTER_BYTES = 8
# Characters str.splitlines() splits at (counted one by one: an upper bound on the lines).
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# The characters json.dumps escapes in a string (ensure_ascii aside): two more or five more characters each.
_JSON_ESCAPED = '"\\' + "".join(map(chr, range(32)))
# Shorter strings are measured exactly (json.dumps, repr) rather than bounded.
_EXACT_MEASURE_CHARS = 4096
_MAX_PRINTED_INT = 10 ** MAX_INT_TEXT_CHARS


class _RenderBudget:
    """What one compile or render may still allocate, and the sizes of the structures it has met."""

    __slots__ = ("bytes_left", "sizes", "reprs", "open_namespaces")

    def __init__(self):
        self.bytes_left = MAX_RENDER_WORK_BYTES
        # id -> (structure, size): the structure is kept so that its id cannot be reused during the render.
        self.sizes: Dict[int, Tuple[Any, int]] = {}
        self.reprs: Dict[int, Tuple[Any, int]] = {}
        self.open_namespaces: "set[int]" = set()    # being printed: a namespace inside itself prints {...}


_BUDGET: "ContextVar[_RenderBudget]" = ContextVar("edgesdk_template_budget")


def _budget() -> _RenderBudget:
    try:
        return _BUDGET.get()
    except LookupError:
        raise SecurityError("template code ran outside a compile or render") from None


def _reserve(n_bytes: int, what: str) -> None:
    """Refuse an allocation the render cannot afford (for memory given back right after)."""
    if n_bytes > _budget().bytes_left:
        raise SecurityError(f"{what} needs {n_bytes} bytes; the render has {_budget().bytes_left} of its "
                            f"{MAX_RENDER_WORK_BYTES >> 20} MiB left")


def _charge(n_bytes: int, what: str) -> None:
    """Pay for memory the render keeps."""
    budget = _budget()
    budget.bytes_left -= n_bytes
    if budget.bytes_left < 0:
        raise SecurityError(f"{what} takes the render past its {MAX_RENDER_WORK_BYTES >> 20} MiB allocation budget")


def _check_chars(n_chars: int, what: str, *sources: str) -> None:
    """Refuse, before it is built, a string of n_chars characters made from sources."""
    if n_chars > MAX_VALUE_SIZE:
        raise SecurityError(f"{what} would make {n_chars} characters, more than the {MAX_VALUE_SIZE} "
                            "one template value may hold")
    # 1 byte a character when every source is ASCII, else at most 4 (CPython's widest strings).
    width = 1
    for text in sources:
        if not text.isascii():
            width = 4
            break
    _reserve(_STR_BYTES + n_chars * width, what)


def _new_str(text: str, what: str) -> str:
    _charge(sys.getsizeof(text), what)
    return text


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and abs(width) > MAX_FORMAT_WIDTH:
        raise SecurityError(f"{what} width {width} exceeds the cap of {MAX_FORMAT_WIDTH}")


def _check_int(value: int, what: str) -> int:
    if value.bit_length() > MAX_INT_BITS:
        raise SecurityError(f"{what} would make a {value.bit_length()}-bit integer; templates get {MAX_INT_BITS} bits")
    return value


_ITEMS_VIEW = type({}.items())
_VIEW_TYPES = (type({}.keys()), type({}.values()), _ITEMS_VIEW)
_STRUCTURES = (list, tuple, dict, set, frozenset) + _VIEW_TYPES


def _register(structure, size: int, depth: int) -> Any:
    """Record a structure the sandbox built, of a size and nesting depth it already knows, and pay for its
    memory."""
    if size > MAX_VALUE_SIZE:
        raise SecurityError(f"a {type(structure).__name__} of size {size} exceeds the {MAX_VALUE_SIZE} "
                            "one template value may hold")
    if depth > MAX_NESTING_DEPTH:
        raise SecurityError(f"a {type(structure).__name__} nested {depth} deep exceeds the {MAX_NESTING_DEPTH} "
                            "levels templates get")
    budget = _budget()
    if id(structure) not in budget.sizes:
        budget.sizes[id(structure)] = (structure, size, depth)
        _charge(sys.getsizeof(structure), f"a {type(structure).__name__}")
    return structure


def _depth(value) -> int:
    """How many structures deep value nests (0 for a string or number)."""
    if not isinstance(value, _STRUCTURES):
        return 0
    _size(value)
    return _budget().sizes[id(value)][2]


def _size(value) -> int:
    """Characters plus items in value, through every reference (see the section comment); SecurityError above
    MAX_VALUE_SIZE. A structure is measured once per render, and pays for its own memory when first met."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, range):
        return len(value)
    if not isinstance(value, _STRUCTURES):
        # Numbers, None, and Jinja's objects: namespaces compare and hash by identity.
        return 1
    budget = _budget()
    known = budget.sizes.get(id(value))
    if known is not None:
        return known[1]
    total, depth = len(value), 0
    if isinstance(value, (dict, _ITEMS_VIEW)):
        # Keys and values; an items view's pairs are made as it is iterated, so they are not recorded.
        for key, item in (value.items() if isinstance(value, dict) else value):
            total += _size(key) + _size(item) + 1
            depth = max(depth, _depth(key), _depth(item))
            if total > MAX_VALUE_SIZE:
                break
    else:
        for item in value:
            total += _size(item)
            depth = max(depth, _depth(item))
            if total > MAX_VALUE_SIZE:
                break
    _register(value, total, depth + 1)
    return total


def _made(value):
    """A literal list/tuple/dict the template just built, checked (the compiled template calls this)."""
    _size(value)
    return value


def _iterated(value, what: str):
    """Pay for the str objects iterating a non-ASCII string creates (CPython caches only Latin-1 ones)."""
    if isinstance(value, str) and not value.isascii():
        _charge(len(value) * _CHAR_OBJECT_BYTES, what)
    return value


def _bounded_list(value, what: str) -> list:
    """list(value) for a filter that needs all of it, refused as soon as it would exceed MAX_VALUE_SIZE."""
    if isinstance(value, (str, range) + _STRUCTURES):
        # A string becomes one item per character; a structure keeps its items.
        size = 2 * len(value) if isinstance(value, str) else _size(value)
        if size > MAX_VALUE_SIZE:
            raise SecurityError(f"{what} would gather more than the {MAX_VALUE_SIZE} one template value may hold")
        _reserve(len(value) * _POINTER_BYTES, what)
        return _register(list(_iterated(value, what)), size, max(_depth(value), 1))
    items = []
    total = depth = 0
    # A generator: what it yields was paid for where it was made, except the pointers kept here.
    for item in value:
        total += 1 + _size(item)
        depth = max(depth, _depth(item))
        if total > MAX_VALUE_SIZE:
            raise SecurityError(f"{what} would gather more than the {MAX_VALUE_SIZE} one template value may hold")
        items.append(item)
    return _register(items, total, depth + 1)


def _splat(value) -> tuple:
    """The items of `*value` in a call (the compiled template calls this)."""
    return tuple(_bounded_list(value, "a *argument"))


def _repr_size(value, top: bool) -> int:
    """An upper bound on len(str(value)) when top, else on len(repr(value)); SecurityError above MAX_VALUE_SIZE."""
    if isinstance(value, str):
        if top:
            return len(value)
        if len(value) <= _EXACT_MEASURE_CHARS:
            return len(repr(value))
        # Escapes: \xNN for ASCII controls (4 characters), \U000XXXXX for unprintable others (10).
        return 2 + len(value) * (4 if value.isascii() else 10)
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2             # decimal digits (fewer than bits / 3) and a sign
    if isinstance(value, float):
        return 24                                       # '-1.7976931348623157e+308'
    budget = _budget()
    if isinstance(value, Namespace):
        if id(value) in budget.open_namespaces:
            return 16
        budget.open_namespaces.add(id(value))
        try:
            return 12 + _repr_size(object.__getattribute__(value, "_Namespace__attrs"), False)
        finally:
            budget.open_namespaces.discard(id(value))
    if not isinstance(value, _STRUCTURES):
        return len(repr(value))                         # loop, macro, cycler, Undefined...: a short fixed text
    known = budget.reprs.get(id(value))
    if known is not None:
        return known[1]
    # Brackets, and the name a view, set or named tuple prints before them.
    total = 2 + (32 if type(value) not in (list, tuple, dict) else 0)
    pairs = value.items() if isinstance(value, dict) else ((item,) for item in value)
    fixed = True
    for pair in pairs:
        for item in pair:
            total += _repr_size(item, False) + 4            # ", " and ": ", a pair's parentheses
            # What holds a namespace changes size as the namespace changes: measured again each time.
            if isinstance(item, Namespace) or isinstance(item, _STRUCTURES) and id(item) not in budget.reprs:
                fixed = False
        if type(value) not in (list, tuple, dict):
            total += 16                                     # a named tuple's field name
        if total > MAX_VALUE_SIZE:
            raise SecurityError(f"printing a {type(value).__name__} would make more than {MAX_VALUE_SIZE} characters")
    if fixed:
        budget.reprs[id(value)] = (value, total)
    return total


def _text(value, what: str = "printing a value") -> str:
    """str(value), refused before it is built when it would be too long: output, ~, format fields."""
    if type(value) is str:
        return value
    if isinstance(value, str) or isinstance(value, Undefined):
        return str(value)
    if isinstance(value, int) and not -_MAX_PRINTED_INT < value < _MAX_PRINTED_INT:
        # int -> str takes time quadratic in the digits; Python's own limit may have been lifted.
        raise SecurityError(f"{what}: an integer of more than {MAX_INT_TEXT_CHARS} digits")
    size = _repr_size(value, True)
    if size > MAX_VALUE_SIZE:
        raise SecurityError(f"{what} would make {size} characters, more than the {MAX_VALUE_SIZE} allowed")
    _reserve(size * 4, what)
    return _new_str(str(value), what)


def _concat(values) -> str:
    """The ~ operator (the compiled template calls this)."""
    texts = [_text(value, "~") for value in values]
    _check_chars(sum(map(len, texts)), "~", *texts)
    return _new_str("".join(texts), "~")


class _OutputBuffer(list):
    """The pieces of a macro's, {% set %} block's, filter block's or call block's output, joined later:
    bounded as they arrive, because the join would make them one string in one C call."""

    __slots__ = ("chars",)

    def __init__(self):
        super().__init__()
        self.chars = 0

    def append(self, piece):
        self.chars += len(piece)
        budget = _BUDGET.get()
        # The join will copy every piece once.
        budget.bytes_left -= sys.getsizeof(piece) - _STR_BYTES
        if self.chars > MAX_VALUE_SIZE or budget.bytes_left < 0:
            raise SecurityError(f"a block's output of {self.chars} characters exceeds what one value may hold "
                                "or the render's allocation budget")
        list.append(self, piece)

    def extend(self, pieces):
        for piece in pieces:
            self.append(piece)


# -- formatting: %, str.format, the format filter

def _percent_format(fmt: str, args) -> str:
    """fmt % args, refused before it is built when too long; the specifiers are walked as CPython does."""
    positional = list(args) if isinstance(args, tuple) else [args]
    mapping = args if isinstance(args, dict) else None
    total, next_arg, i, n = len(fmt), 0, 0, len(fmt)

    def take() -> Any:
        nonlocal next_arg
        if next_arg >= len(positional):
            return None                     # Python raises "not enough arguments"
        next_arg += 1
        return positional[next_arg - 1]

    def number(at: int) -> Tuple[Optional[int], int]:
        if at < n and fmt[at] == "*":
            star = take()
            _check_width(star, "a %-format *")
            return (abs(star) if isinstance(star, int) else 0), at + 1
        end = at
        while end < n and fmt[end].isdigit():
            end += 1
        if end - at > 6:
            raise SecurityError(f"a %-format width or precision of {end - at} digits exceeds {MAX_FORMAT_WIDTH}")
        value = int(fmt[at:end]) if end > at else None
        _check_width(value, "a %-format")
        return value, end

    while True:
        i = fmt.find("%", i)
        if i < 0 or i + 1 >= n:
            break
        i += 1
        if fmt[i] == "%":
            i += 1
            continue
        key = None
        if fmt[i] == "(":
            depth, start = 1, i + 1
            while i + 1 < n and depth:
                i += 1
                depth += {"(": 1, ")": -1}.get(fmt[i], 0)
            key, i = fmt[start:i], i + 1
        while i < n and fmt[i] in "-+ #0":
            i += 1
        width, i = number(i)
        precision = None
        if i < n and fmt[i] == ".":
            precision, i = number(i + 1)
            precision = precision or 0
        if i < n and fmt[i] in "hlL":
            i += 1
        if i >= n:
            break
        conversion = fmt[i]
        i += 1
        arg = mapping.get(key) if key is not None and mapping is not None else (take() if key is None else None)
        if conversion in "sra":
            # ascii() writes a non-ASCII character as up to 10 ASCII ones.
            size = _repr_size(arg, conversion == "s") * (10 if conversion == "a" else 1)
        elif conversion == "c":
            size = 1
        elif isinstance(arg, int):
            size = arg.bit_length() // 3 + 4 + (precision or 0)   # octal has the most digits: bits / 3
        else:
            size = 330 + (precision or 0)    # a float: 309 integer digits at most, a point, the precision
        total += max(width or 0, size)
        if total > MAX_VALUE_SIZE:
            break
    _check_chars(total, "a %-format", fmt)
    return _new_str(fmt % args, "a %-format")


# [[fill]align][sign][z][#][0][width][grouping][.precision][type]: the format-spec mini-language.
_FORMAT_SPEC = re.compile(r"(?:.?[<>=^])?[-+ ]?z?#?0?(?P<width>\d*)[,_]?(?:\.(?P<precision>\d+))?[bcdeEfFgGnosxX%]?\Z",
                          re.DOTALL)


class _BoundedFormatter(SandboxedFormatter):
    """str.format and format_map with the sandbox's attribute rules, every field checked before it is formatted."""

    def __init__(self, env):
        super().__init__(env)
        self.chars = 0

    def convert_field(self, value, conversion):
        if conversion == "s":
            return _text(value, "a format field")
        if conversion in ("r", "a"):
            size = _repr_size(value, False) * (10 if conversion == "a" else 1)   # ascii(): \U000XXXXX
            _check_chars(size, "a format field")
            return repr(value) if conversion == "r" else ascii(value)
        return super().convert_field(value, conversion)

    def format_field(self, value, format_spec):
        match = _FORMAT_SPEC.match(format_spec)
        if match is None:
            raise SecurityError(f"format spec {format_spec[:40]!r} is not one templates may use")
        width = match.group("width") or "0"
        precision = match.group("precision") or "0"
        if len(width) > 6 or len(precision) > 6:
            raise SecurityError(f"format spec {format_spec[:40]!r} exceeds the width cap of {MAX_FORMAT_WIDTH}")
        _check_width(int(width), "a format spec")
        _check_width(int(precision), "a format spec precision")
        if isinstance(value, float):
            size = 450 + int(precision)     # 309 integer digits, 103 group separators, sign, point, exponent
        elif isinstance(value, int):
            size = value.bit_length() + 4 + int(precision)   # binary has the most digits
        else:
            size = _repr_size(value, True)
        self.chars += max(size, int(width))
        _check_chars(self.chars, "str.format", value if isinstance(value, str) else "", format_spec)
        if not format_spec and not isinstance(value, (str, int, float)):
            return _text(value, "a format field")
        return format(value, format_spec)


def _bounded_str_format(env, text: str, method_name: str):
    def bounded(*args, **kwargs):
        formatter = _BoundedFormatter(env)
        formatter.chars = len(text)
        if method_name == "format_map":
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one argument")
            args, kwargs = (), args[0]
        return _new_str(formatter.vformat(text, args, kwargs), "str.format")
    return bounded


# -- str, dict and list methods a template may call

def _pad(name: str):
    def bounded(s: str, width, *fill):
        _check_width(width, f"str.{name}")
        _check_chars(max(len(s), width if isinstance(width, int) else 0), f"str.{name}", s,
                     *(f for f in fill if isinstance(f, str)))
        return _new_str(getattr(s, name)(width, *fill), f"str.{name}")
    return bounded


def _cased(name: str):
    def bounded(s: str):
        # Full Unicode case mapping makes at most three characters of one ('\ufb03'.upper() == 'FFI').
        _check_chars(3 * len(s), f"str.{name}", s)
        return _new_str(getattr(s, name)(), f"str.{name}")
    return bounded


def _shrinking(name: str):
    def bounded(s: str, *args):
        return _new_str(getattr(s, name)(*args), f"str.{name}")
    return bounded


def _expandtabs(s: str, tabsize=8):
    _check_width(tabsize, "str.expandtabs")
    if isinstance(tabsize, int):
        _check_chars(len(s) + s.count("\t") * max(tabsize, 0), "str.expandtabs", s)
    return _new_str(s.expandtabs(tabsize), "str.expandtabs")


def _replace(s: str, old, new, count=-1):
    if isinstance(old, str) and isinstance(new, str) and isinstance(count, int):
        matches = len(s) + 1 if not old else s.count(old)
        if count >= 0:
            matches = min(matches, count)
        _check_chars(len(s) + matches * max(0, len(new) - len(old)), "replace", s, new)
    return _new_str(s.replace(old, new, count), "replace")


def _split(name: str):
    def bounded(s: str, sep=None, maxsplit=-1):
        pieces = s.count(sep) + 1 if isinstance(sep, str) and sep else len(s) // 2 + 1
        if isinstance(maxsplit, int) and maxsplit >= 0:
            pieces = min(pieces, maxsplit + 1)
        return _new_pieces(lambda: getattr(s, name)(sep, maxsplit), s, pieces, f"str.{name}")
    return bounded


def _splitlines(s: str, keepends=False):
    pieces = sum(map(s.count, _LINE_BREAKS)) + 1
    return _new_pieces(lambda: s.splitlines(keepends), s, pieces, "str.splitlines")


def _partition(name: str):
    def bounded(s: str, sep):
        return _new_pieces(lambda: getattr(s, name)(sep), s, 3, f"str.{name}")
    return bounded


def _new_pieces(make, s: str, pieces: int, what: str):
    """A list or tuple of pieces of s: at most `pieces` strings holding at most len(s) characters."""
    _reserve(pieces * (_POINTER_BYTES + _STR_BYTES) + len(s) * (1 if s.isascii() else 4), what)
    result = make()
    _charge(len(result) * _STR_BYTES + sys.getsizeof(s) - _STR_BYTES, what)
    return _register(result, len(result) + len(s), 1)


def _join(s: str, iterable):
    items = _bounded_list(iterable, "str.join")
    if all(isinstance(item, str) for item in items):
        _check_chars(sum(map(len, items)) + max(len(items) - 1, 0) * len(s), "str.join", s, *items)
    return _new_str(s.join(items), "str.join")


def _no_allocation(name: str):
    def bounded(s: str, *args):
        return getattr(s, name)(*args)
    return bounded


_STR_METHODS: Dict[str, Any] = {
    **{name: _pad(name) for name in ("center", "ljust", "rjust", "zfill")},
    **{name: _cased(name) for name in ("capitalize", "casefold", "lower", "swapcase", "title", "upper")},
    **{name: _shrinking(name) for name in ("strip", "lstrip", "rstrip", "removeprefix", "removesuffix")},
    **{name: _no_allocation(name) for name in (
        "count", "endswith", "find", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit",
        "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper", "rfind",
        "rindex", "startswith")},
    "expandtabs": _expandtabs, "replace": _replace, "join": _join, "splitlines": _splitlines,
    "split": _split("split"), "rsplit": _split("rsplit"),
    "partition": _partition("partition"), "rpartition": _partition("rpartition"),
}
_DICT_METHODS = frozenset(["get", "items", "keys", "values"])
_SEQUENCE_METHODS = frozenset(["count", "index"])
_LOOP_ATTRIBUTES = frozenset(["index", "index0", "revindex", "revindex0", "first", "last", "length", "depth",
                              "depth0", "previtem", "nextitem", "cycle", "changed"])
_CYCLER_ATTRIBUTES = frozenset(["current", "next", "reset"])
# Callables implemented in C: only the methods above may be called.
_C_CALLABLES = (types.BuiltinFunctionType, types.MethodWrapperType, types.MethodDescriptorType,
                types.WrapperDescriptorType, types.ClassMethodDescriptorType)


# -- operators

def _binop(context, operator_name: str, left, right):
    """The template's + - * / // % ** (the compiled template calls this as environment.call_binop)."""
    if operator_name == "+" and type(left) is str and type(right) is str:
        # Most of what real templates do, inline: joining a role, a content and the markers around them.
        n = len(left) + len(right)
        budget = _BUDGET.get()
        if n > MAX_VALUE_SIZE or _STR_BYTES + n * (1 if left.isascii() and right.isascii() else 4) > budget.bytes_left:
            _check_chars(n, "+", left, right)       # says why
        result = left + right
        budget.bytes_left -= sys.getsizeof(result)
        return result
    ints = isinstance(left, int) and isinstance(right, int)
    if operator_name in ("+", "-"):
        if ints:
            if max(left.bit_length(), right.bit_length()) >= MAX_INT_BITS:
                _check_int(left + right if operator_name == "+" else left - right, operator_name)
            return left + right if operator_name == "+" else left - right
        if operator_name == "+" and isinstance(left, str) and isinstance(right, str):
            _check_chars(len(left) + len(right), "+", left, right)
            return _new_str(left + right, "+")
        if operator_name == "+" and isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
            size = _size(left) + _size(right)
            if size > MAX_VALUE_SIZE:
                raise SecurityError(f"+ would make a value of size {size}, more than the {MAX_VALUE_SIZE} allowed")
            _reserve((len(left) + len(right)) * _POINTER_BYTES, "+")
            return _register(left + right, size, max(_depth(left), _depth(right)))
    elif operator_name == "*":
        if ints:
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise SecurityError(f"a {left.bit_length()}-bit by {right.bit_length()}-bit product exceeds "
                                    f"the {MAX_INT_BITS} bits templates get")
            return left * right
        for seq, count in ((left, right), (right, left)):
            if isinstance(count, int) and isinstance(seq, (str, list, tuple)):
                count = max(count, 0)
                if isinstance(seq, str):
                    _check_chars(len(seq) * count, "*", seq)
                    return _new_str(seq * count, "*")
                size = _size(seq) * count
                if size > MAX_VALUE_SIZE:
                    raise SecurityError(f"repeating a {type(seq).__name__} {count} times makes a value of size "
                                        f"{size}, more than the {MAX_VALUE_SIZE} allowed")
                _reserve(len(seq) * count * _POINTER_BYTES, "*")
                return _register(seq * count, size, _depth(seq))
    elif operator_name == "**":
        if ints and right > 0 and abs(left) > 1:
            bits = right * math.log2(abs(left)) if right <= MAX_INT_BITS else float("inf")
            if bits > MAX_INT_BITS:
                raise SecurityError(f"{left} ** {right} would have about {bits:.0f} bits; templates get {MAX_INT_BITS}")
        return operator.pow(left, right)
    elif operator_name == "%" and isinstance(left, str):
        return _percent_format(left, right)
    return _PLAIN_BINOPS[operator_name](left, right)


_PLAIN_BINOPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
                 "//": operator.floordiv, "%": operator.mod, "**": operator.pow}


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with the operations that build values routed through the sandbox:
    ~ (_concat), list/tuple/dict literals (_made), *arguments (_splat) and output buffers (_OutputBuffer)."""

    def buffer(self, frame):
        frame.buffer = self.temporary_identifier()
        self.writeline(f"{frame.buffer} = environment.edgesdk_buffer()")

    @optimizeconst
    def visit_Concat(self, node, frame):
        self.write("environment.edgesdk_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def _literal(self, visit, node, frame):
        if getattr(node, "ctx", "load") != "load":      # an assignment target: {% for a, b in ... %}
            return visit(node, frame)
        self.write("environment.edgesdk_made(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node, frame):
        self._literal(super().visit_List, node, frame)

    def visit_Tuple(self, node, frame):
        self._literal(super().visit_Tuple, node, frame)

    def visit_Dict(self, node, frame):
        self.write("environment.edgesdk_made(")
        super().visit_Dict(node, frame)
        self.write(")")

    def signature(self, node, frame, extra_kwargs=None):
        if node.dyn_args is not None:
            node = copy.copy(node)
            node.dyn_args = nodes.Call(nodes.EnvironmentAttribute("edgesdk_splat"), [node.dyn_args], [], None, None,
                                       lineno=node.lineno)
        super().signature(node, frame, extra_kwargs)

    def visit_EvalContextModifier(self, node, frame):
        self.fail("{% autoescape %} is not available in chat templates", node.lineno)

    visit_ScopedEvalContextModifier = visit_EvalContextModifier


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, narrowed to an allow-list, with every operation that builds a value bounded."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(_PLAIN_BINOPS)
    edgesdk_buffer = staticmethod(_OutputBuffer)
    edgesdk_concat = staticmethod(_concat)
    edgesdk_made = staticmethod(_made)
    edgesdk_splat = staticmethod(_splat)

    # The compiled template calls environment.call_binop(context, operator, left, right).
    call_binop = staticmethod(_binop)


    def is_safe_attribute(self, obj, attr, value):
        if attr.startswith("_"):
            return False
        if isinstance(obj, str):
            return attr in _STR_METHODS
        if isinstance(obj, dict):
            return attr in _DICT_METHODS
        if isinstance(obj, tuple) and attr in getattr(type(obj), "_fields", ()):
            return True                     # a named tuple's field: groupby's grouper and list
        if isinstance(obj, (list, tuple)):
            return attr in _SEQUENCE_METHODS
        if isinstance(obj, Namespace):
            return True
        if isinstance(obj, LoopContext):
            return attr in _LOOP_ATTRIBUTES
        if isinstance(obj, Cycler):
            return attr in _CYCLER_ATTRIBUTES
        return False

    # getattr and getitem do what Jinja's sandbox does, here rather than in super() so that the common
    # case (an item of a message dict) runs in one untraced frame (see _Deadline).

    def getattr(self, obj, attribute):
        if isinstance(obj, TemplateReference):
            # self.block() would join a block's whole output in one call.
            return self.unsafe_undefined(obj, attribute)
        try:
            value = getattr(obj, attribute)
        except AttributeError:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return self.undefined(obj=obj, name=attribute)
        bounded_format = self.wrap_str_format(value)
        if bounded_format is not None:
            return bounded_format
        if self.is_safe_attribute(obj, attribute, value):
            return value
        return self.unsafe_undefined(obj, attribute)

    def getitem(self, obj, argument):
        if isinstance(argument, slice) and isinstance(obj, (str, list, tuple)):
            n = len(range(len(obj))[argument])
            if isinstance(obj, str):
                _check_chars(n, "slicing", obj)
                return _new_str(obj[argument], "slicing")
            _reserve(n * _POINTER_BYTES, "slicing")
            return _register(obj[argument], _size(obj), _depth(obj))
        if isinstance(obj, TemplateReference):
            return self.unsafe_undefined(obj, argument)
        try:
            return obj[argument]
        except (TypeError, LookupError):
            if isinstance(argument, str):
                return self.getattr(obj, argument)      # obj['upper'] is obj.upper, allow-listed
            return self.undefined(obj=obj, name=argument)

    def wrap_str_format(self, value):
        if (isinstance(value, (types.MethodType, types.BuiltinMethodType)) and isinstance(value.__self__, str)
                and value.__name__ in ("format", "format_map")):
            return _bounded_str_format(self, value.__self__, value.__name__)
        return None

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's signature
        if isinstance(__obj, _C_CALLABLES):
            # Jinja passes a context's variables along for callables that take the context; these do not.
            kwargs.pop("_block_vars", None)
            kwargs.pop("_loop_vars", None)
            owner = getattr(__obj, "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str) and name in _STR_METHODS:
                return _STR_METHODS[name](owner, *args, **kwargs)
            if (isinstance(owner, dict) and name in _DICT_METHODS
                    or isinstance(owner, (list, tuple)) and name in _SEQUENCE_METHODS):
                return __obj(*args, **kwargs)
            raise SecurityError(f"{type(owner).__name__}.{name} is not available to templates")
        if isinstance(__obj, BlockReference):
            raise SecurityError("calling a block is not available to templates")
        return super().call(__context, __obj, *args, **kwargs)


# -- filters and globals: Jinja's, bounded, and the ones Hugging Face adds

_JINJA_FILTERS = DEFAULT_FILTERS


def _iterating_filter(name: str):
    """A lazy Jinja filter (map, select, ...) over its input: pays for iterating a string."""
    original = _JINJA_FILTERS[name]

    @pass_context
    def bounded(context, value, *args, **kwargs):
        return original(context, _iterated(value, name), *args, **kwargs)
    return bounded


def _materializing_filter(name: str):
    """A Jinja filter that needs its whole input at once (sort, min, groupby, ...): gathered bounded first,
    and the copies its case-insensitive comparison makes reserved."""
    original = _JINJA_FILTERS[name]

    @pass_environment
    def bounded(environment, value, *args, **kwargs):
        items = _bounded_list(value, name)
        _reserve(_size(items) * 4, name)
        result = original(environment, items, *args, **kwargs)
        if not isinstance(result, list):
            return result
        # groupby's result holds (grouper, list) pairs: two levels and three items more per group.
        return _register(result, _size(items) + 3 * len(result), _depth(items) + 2)
    return bounded


def _cased_filter(method: str):
    """Jinja's capitalize/lower/upper (str(value).method()), bounded; written out, as these run once per
    message in real templates and each Python call costs extra under the deadline's trace."""
    def bounded(value):
        text = value if type(value) is str else _text(value, method)
        budget = _BUDGET.get()
        # Full Unicode case mapping makes at most three characters of one ('\ufb03'.upper() == 'FFI').
        if 3 * len(text) > MAX_VALUE_SIZE or _STR_BYTES + 12 * len(text) > budget.bytes_left:
            _check_chars(3 * len(text), method, text)       # says why, or passes for ASCII text
        result = getattr(text, method)()
        budget.bytes_left -= sys.getsizeof(result)
        return result
    return bounded


def _trim_filter(value, chars=None):
    # Jinja's trim: str(value).strip(chars), never longer than its input.
    text = value if type(value) is str else _text(value, "trim")
    result = text.strip(chars)
    budget = _BUDGET.get()
    budget.bytes_left -= sys.getsizeof(result)
    if budget.bytes_left < 0:
        _charge(0, "trim")                                  # raises, saying why
    return result


def _center_filter(value, width=80):
    return _pad("center")(_text(value, "center"), width)


def _indent_filter(s, width=4, first=False, blank=False):
    if isinstance(s, str):
        _check_width(width, "indent")
        indention = len(width) if isinstance(width, str) else max(width, 0) if isinstance(width, int) else 0
        lines = sum(map(s.count, _LINE_BREAKS)) + 2        # the filter appends a newline, and first may add one
        _check_chars(len(s) + 1 + lines * indention, "indent", s, width if isinstance(width, str) else "")
        _reserve(lines * _CHAR_OBJECT_BYTES, "indent")    # the list splitlines makes
    return _new_str(_JINJA_FILTERS["indent"](s, width, first, blank), "indent")


def _replace_filter(s, old, new, count=None):
    # Jinja's replace without autoescaping, which is always off here.
    return _replace(_text(s, "replace"), _text(old, "replace"), _text(new, "replace"), -1 if count is None else count)


def _format_filter(value, *args, **kwargs):
    # Jinja's `format` filter is printf-style formatting of the value.
    if args and kwargs:
        raise FilterArgumentError("can't handle positional and keyword arguments at the same time")
    return _percent_format(_text(value, "format"), kwargs or args)


@pass_eval_context
def _join_filter(eval_ctx, value, d="", attribute=None):
    if attribute is not None:
        value = map(make_attrgetter(eval_ctx.environment, attribute), _iterated(value, "join"))
    texts = [_text(item, "join") for item in _bounded_list(value, "join")]
    separator = _text(d, "join")
    _check_chars(sum(map(len, texts)) + max(len(texts) - 1, 0) * len(separator), "join", separator, *texts)
    return _new_str(separator.join(texts), "join")


@pass_environment
def _sum_filter(environment, iterable, attribute=None, start=0):
    if not isinstance(start, (int, float)):
        raise SecurityError("sum adds numbers only in a template")
    items = _bounded_list(iterable, "sum")
    if attribute is not None:
        items = list(map(make_attrgetter(environment, attribute), items))
    total = start
    for item in items:          # in Python, so that the deadline sees each step
        total = _binop(None, "+", total, item)
    return total


def _batch_filter(value, linecount, fill_with=None):
    items = _bounded_list(value, "batch")
    if fill_with is not None and isinstance(linecount, int):
        # The last row is padded with fill_with up to linecount items, in one allocation.
        row = linecount * (1 + _size(fill_with))
        if row > MAX_VALUE_SIZE:
            raise SecurityError(f"batch rows of {linecount} would exceed the {MAX_VALUE_SIZE} one value may hold")
        _reserve(linecount * _POINTER_BYTES, "batch")
    return _JINJA_FILTERS["batch"](items, linecount, fill_with)


@pass_eval_context
def _slice_filter(eval_ctx, value, slices, fill_with=None):
    if isinstance(slices, int):
        _reserve(slices * sys.getsizeof([]), "slice")    # a list per slice
    return _JINJA_FILTERS["slice"](eval_ctx, _bounded_list(value, "slice"), slices, fill_with)


def _list_filter(value):
    return _bounded_list(value, "list")


def _reverse_filter(value):
    if isinstance(value, str):
        _check_chars(len(value), "reverse", value)
        return _new_str(value[::-1], "reverse")
    try:
        return reversed(value)
    except TypeError:
        items = _bounded_list(value, "reverse")
        items.reverse()
        return items


def _dictsort_filter(value, *args, **kwargs):
    _reserve(_size(value) * 4, "dictsort")
    result = _JINJA_FILTERS["dictsort"](value, *args, **kwargs)
    return _register(result, _size(value) + len(result), _depth(value) + 1)


def _int_filter(value, default=0, base=10):
    if isinstance(value, str) and len(value) > MAX_INT_TEXT_CHARS:
        raise SecurityError(f"int of a {len(value)}-character string: templates convert {MAX_INT_TEXT_CHARS} at most")
    return _JINJA_FILTERS["int"](value, default, base)


def _round_filter(value, precision=0, method="common"):
    if isinstance(precision, int) and abs(precision) > MAX_ROUND_DIGITS:
        raise SecurityError(f"round to {precision} digits: templates round to {MAX_ROUND_DIGITS} at most")
    return _JINJA_FILTERS["round"](value, precision, method)


def _escape_filter(value):
    text = _text(value, "escape")
    _check_chars(5 * len(text), "escape", text)          # '"' becomes '&#34;'
    return _new_str(str(markupsafe.escape(text)), "escape")


def _safe_filter(value):
    return _text(value, "safe")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Hugging Face renders tojson without HTML escaping; templates rely on that.
    _check_width(indent, "tojson indent")
    if separators is None:
        separators = (", ", ": ") if indent is None else (",", ": ")     # json.dumps's defaults
    if isinstance(indent, str):
        indent_chars = len(indent)
    else:
        indent_chars = max(indent, 0) if isinstance(indent, int) else 0
    try:
        item_sep, key_sep = separators
    except (TypeError, ValueError):
        item_sep = key_sep = ""
    measure = _JsonMeasure(ensure_ascii, len(item_sep) if isinstance(item_sep, str) else 0,
                           len(key_sep) if isinstance(key_sep, str) else 0)
    flat, lines, depth_sum = measure.measure(value)
    size = flat + (lines + depth_sum * indent_chars if indent is not None else 0)
    _check_chars(size, "tojson", "" if ensure_ascii else "\u65e5")
    return _new_str(json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                               sort_keys=sort_keys), "tojson")


class _JsonMeasure:
    """An upper bound on the length of json.dumps(value), in three depth-independent parts per structure
    (measured once each): characters without indentation, indented lines, and the sum of those lines'
    depths below the structure. At depth d a structure takes flat + lines * (1 + d * indent) + depth_sum * indent."""

    def __init__(self, ensure_ascii: bool, item_sep: int, key_sep: int):
        self.ensure_ascii = ensure_ascii
        self.item_sep = item_sep
        self.key_sep = key_sep
        self.known: Dict[int, Tuple[Any, Tuple[int, int, int]]] = {}

    def string(self, text: str) -> int:
        if len(text) <= _EXACT_MEASURE_CHARS:
            return len(json.dumps(text, ensure_ascii=self.ensure_ascii))
        size = 2 + len(text) + 5 * sum(map(text.count, _JSON_ESCAPED))
        if self.ensure_ascii and not text.isascii():
            size += 11 * len(text)          # a character outside the BMP becomes two \uXXXX escapes
        return size

    def measure(self, value) -> Tuple[int, int, int]:
        if isinstance(value, str):
            return self.string(value), 0, 0
        if isinstance(value, bool) or value is None:
            return 5, 0, 0
        if isinstance(value, int):
            return value.bit_length() * 1233 // 4096 + 2, 0, 0
        if isinstance(value, float):
            return 24, 0, 0
        if not isinstance(value, (list, tuple, dict)):
            return 0, 0, 0                  # json.dumps refuses it
        known = self.known.get(id(value))
        if known is not None:
            return known[1]
        flat, lines, depth_sum = 2, 0, 0
        if value:
            lines, depth_sum = len(value) + 1, len(value)
            flat += (len(value) - 1) * self.item_sep
        parts = [(k, v) for k, v in value.items()] if isinstance(value, dict) else [(None, v) for v in value]
        for key, item in parts:
            if key is not None:
                flat += (self.string(key) if isinstance(key, str) else 2 + self.measure(key)[0]) + self.key_sep
            item_flat, item_lines, item_depths = self.measure(item)
            flat += item_flat
            lines += item_lines
            depth_sum += item_depths + item_lines
            if flat + lines > MAX_VALUE_SIZE:
                raise SecurityError(f"tojson would make more than {MAX_VALUE_SIZE} characters")
        self.known[id(value)] = (value, (flat, lines, depth_sum))
        return flat, lines, depth_sum


def _strftime_now(fmt: str) -> str:
    if len(fmt) > MAX_STRFTIME_FORMAT_CHARS:
        raise SecurityError(f"a strftime format of {len(fmt)} characters; templates get {MAX_STRFTIME_FORMAT_CHARS}")
    return _new_str(datetime.now().strftime(fmt), "strftime_now")


def _bounded_dict(*args, **kwargs) -> dict:
    if args and not isinstance(args[0], dict):
        args = (_bounded_list(args[0], "dict"),) + args[1:]
    result = dict(*args, **kwargs)
    _size(result)
    return result


def _bounded_namespace(*args, **kwargs) -> Namespace:
    namespace = Namespace(*args, **kwargs)
    _size(object.__getattribute__(namespace, "_Namespace__attrs"))
    return namespace


def _raise_exception(message: str):
    raise TemplateError(f"the chat template refused the conversation: {message}")


@pass_environment
def _truncate_filter(environment, s, length=255, killwords=False, end="...", leeway=None):
    # At most s and end, copied once.
    return _new_str(_JINJA_FILTERS["truncate"](environment, s, length, killwords, end, leeway), "truncate")


def _title_filter(value):
    text = _text(value, "title")
    _check_chars(3 * len(text), "title", text)
    _reserve(len(text) * _CHAR_OBJECT_BYTES, "title")      # the words Jinja's regex split makes on the way
    return _new_str(_JINJA_FILTERS["title"](text), "title")


# What a template may apply. Left out of Jinja's: pprint, random, striptags, urlencode, urlize, wordcount,
# wordwrap and xmlattr (text processing no chat template needs, each able to amplify or run long in C).
_FILTERS: Dict[str, Any] = {
    **{name: _JINJA_FILTERS[name] for name in (
        "abs", "attr", "count", "d", "default", "filesizeformat", "first", "float", "items", "last", "length")},
    **{name: _iterating_filter(name) for name in ("map", "reject", "rejectattr", "select", "selectattr")},
    **{name: _materializing_filter(name) for name in ("groupby", "max", "min", "sort", "unique")},
    "capitalize": _cased_filter("capitalize"), "lower": _cased_filter("lower"), "upper": _cased_filter("upper"),
    "title": _title_filter, "truncate": _truncate_filter,
    "trim": _trim_filter,
    "string": lambda value: _text(value, "string"),
    "center": _center_filter, "indent": _indent_filter, "replace": _replace_filter, "format": _format_filter,
    "join": _join_filter, "sum": _sum_filter, "batch": _batch_filter, "slice": _slice_filter,
    "list": _list_filter, "reverse": _reverse_filter, "dictsort": _dictsort_filter,
    "int": _int_filter, "round": _round_filter,
    "e": _escape_filter, "escape": _escape_filter, "forceescape": _escape_filter, "safe": _safe_filter,
    "tojson": _tojson,
}


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` (Hugging Face's marker for training masks) renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _Deadline:
    """A trace function that aborts the traced thread's Python code after a deadline.

    It checks the time on every line of the compiled template, and on every Python call anywhere
    (Jinja's runtime and filters, this module). Only the template's own lines need watching: its
    loops can run for ever without calling anything, while a loop in Jinja's or this module's code
    either calls Python on each round (a generator resumed, a key function) or walks a value whose
    size the sandbox has bounded. Tracing those modules line by line would cost more than the
    render."""

    def __init__(self, seconds: float):
        self.until = time.monotonic() + seconds
        self.seconds = seconds

    def __call__(self, frame, event, arg):
        if time.monotonic() > self.until:
            raise TemplateError(f"the chat template ran longer than {self.seconds:.1f} s and was stopped")
        if event == "call" and frame.f_code.co_filename != _TEMPLATE_FILE:
            return None
        return self




def _new_environment() -> _BoundedSandbox:
    # The options Hugging Face transformers (and llama-cpp-python) render chat templates with.
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, loopcontrols],
                          finalize=_text)
    env.filters = dict(_FILTERS)
    env.globals.pop("lipsum", None)
    env.globals.update(dict=_bounded_dict, namespace=_bounded_namespace, raise_exception=_raise_exception,
                       strftime_now=_strftime_now)
    return env


def compile_template(source: str, name: str) -> Template:
    """The compiled template, or a TemplateError saying why it cannot be."""
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateError(f"the {name} chat template has {len(source)} characters; at most "
                            f"{MAX_TEMPLATE_CHARS} are compiled")
    env = _new_environment()
    # Compiling folds constant expressions, so it has an allocation budget too. It has no deadline: its
    # time is linear in the source, which MAX_TEMPLATE_CHARS bounds, and a deadline would refuse real
    # templates on slow boards (compiling 16 KB takes ~0.2 s on x86).
    budget = _BUDGET.set(_RenderBudget())
    try:
        return env.from_string(source)
    except TemplateError:
        raise
    except TemplateSyntaxError as exc:
        raise TemplateError(f"the {name} chat template does not compile: {exc.message} (line {exc.lineno})") from None
    except RecursionError:
        raise TemplateError(f"the {name} chat template nests too deeply to compile") from None
    except Exception as exc:  # noqa: BLE001 - Python's own compile errors, from a hostile file
        raise TemplateError(f"the {name} chat template does not compile: {type(exc).__name__}: {exc}") from None
    finally:
        _BUDGET.reset(budget)


def render(template: Template, variables: Dict[str, Any], name: str) -> str:
    """The template's output, within the deadline, the output cap and the allocation budget."""
    pieces = []
    size = 0
    # The trace and the budget are set and reset in this frame: a frame entered afterwards would be
    # traced, and could be stopped by the deadline before it put them back.
    budget = _BUDGET.set(_RenderBudget())
    previous_trace = sys.gettrace()
    sys.settrace(_Deadline(RENDER_TIME_LIMIT_S))
    try:
        for piece in template.generate(**variables):
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise TemplateError(f"the {name} chat template produced more than {MAX_RENDER_CHARS} "
                                    "characters and was stopped")
            pieces.append(piece)
    except TemplateError:
        raise
    except SecurityError as exc:
        raise TemplateError(f"the {name} chat template tried something the sandbox forbids: {exc}") from None
    except RecursionError:
        raise TemplateError(f"the {name} chat template recursed too deeply") from None
    except Exception as exc:  # noqa: BLE001 - whatever a hostile template makes Jinja or Python raise
        raise TemplateError(f"the {name} chat template failed: {type(exc).__name__}: {exc}") from None
    finally:
        sys.settrace(previous_trace)
        _BUDGET.reset(budget)
    return "".join(pieces)


__all__ = ["compile_template", "render", "RENDER_TIME_LIMIT_S", "MAX_RENDER_CHARS", "MAX_TEMPLATE_CHARS",
           "MAX_VALUE_SIZE", "MAX_RENDER_WORK_BYTES", "MAX_FORMAT_WIDTH", "MAX_INT_BITS"]
