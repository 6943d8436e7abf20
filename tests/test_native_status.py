"""Every ek_status the header defines turns into its own edgesdk.errors class in _native.check.

The codes are read from native/include/edgekern.h, so a code added there without a mapping
(and without an expectation here) fails these tests."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgesdk import _native, errors

HEADER = Path(__file__).resolve().parent.parent / "native" / "include" / "edgekern.h"


def header_status_codes() -> dict[str, int]:
    enum = re.search(r"typedef enum ek_status \{(.*?)\} ek_status;", HEADER.read_text(encoding="utf-8"), re.S).group(1)
    return {name: int(value) for name, value in re.findall(r"\b(EK_ERR_\w+)\s*=\s*(\d+)", enum)}


# What each failure means to a caller; NativeError only for the one that is a bug of ours.
EXPECTED = {
    "EK_ERR_INVALID_ARG": errors.InvalidArgumentError,
    "EK_ERR_UNSUPPORTED": errors.UnsupportedModelError,
    "EK_ERR_NO_MEMORY": errors.NativeMemoryError,
    "EK_ERR_ISA_UNAVAILABLE": errors.UnsupportedISAError,
    "EK_ERR_THREADS": errors.ThreadStartError,
    "EK_ERR_CONTEXT_FULL": errors.ContextOverflowError,
    "EK_ERR_INTERNAL": errors.NativeError,
    "EK_ERR_CANCELLED": errors.CancelledError,
    "EK_ERR_NON_FINITE": errors.NonFiniteRowError,
}
CODES = header_status_codes()


def test_the_header_defines_the_codes_this_test_expects():
    assert CODES, "no EK_ERR_* found in edgekern.h"
    assert sorted(CODES) == sorted(EXPECTED), "a status code was added or removed: map it in _native.STATUS_ERRORS"


def test_every_header_code_has_a_binding_constant_and_one_mapping():
    for name, value in CODES.items():
        assert getattr(_native, name) == value, name
    assert sorted(_native.STATUS_ERRORS) == sorted(CODES.values())


@pytest.mark.parametrize("name", sorted(CODES))
def test_check_raises_the_mapped_edgesdk_error_with_the_native_text(name):
    code = CODES[name]
    text = _native.lib.ek_status_str(code).decode()
    assert text != "unknown status"
    with pytest.raises(EXPECTED[name]) as raised:
        _native.check(code, "ek_something(3)")
    assert type(raised.value) is EXPECTED[name]
    assert isinstance(raised.value, errors.EdgeSDKError)
    assert str(raised.value) == f"ek_something(3): {text} (ek_status {code})"


def test_out_of_memory_is_an_edgesdk_error_that_is_also_a_memory_error():
    with pytest.raises(errors.EdgeSDKError) as raised:
        _native.check(_native.EK_ERR_NO_MEMORY, "ek_model_create")
    assert isinstance(raised.value, MemoryError)


def test_ok_raises_nothing():
    assert _native.check(_native.EK_OK, "ek_matmul") is None


def test_a_code_the_header_does_not_define_is_a_native_error_naming_it():
    unknown = max(CODES.values()) + 1
    with pytest.raises(errors.NativeError, match=rf"ek_matmul: unknown status \(ek_status {unknown}\)"):
        _native.check(unknown, "ek_matmul")
