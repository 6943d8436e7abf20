"""The import-time ABI check: the library reports the header's EK_ABI_VERSION and the layout of
the structs edgesdk._native mirrors, and a mirror that disagrees (a stale build, or a header
edited without the binding) is refused with NativeBuildError naming the member."""
from __future__ import annotations

import ctypes
import re
import types
from pathlib import Path

import pytest

from edgesdk import _native
from edgesdk.errors import NativeBuildError

HEADER = Path(__file__).resolve().parent.parent / "native" / "include" / "edgekern.h"
# Struct members are at most 8-byte aligned here (pointers, int64_t, uint64_t), so a gap of 8
# or more between two listed members can only be a member the library's table left out.
MAX_ALIGNMENT = 8


def header_text() -> str:
    return HEADER.read_text(encoding="utf-8")


def header_struct_members(c_name: str) -> list[str]:
    """Member names of `typedef struct c_name { ... } c_name;` in declaration order, read from the header."""
    body = re.search(r"typedef struct %s \{(.*?)\} %s;" % (c_name, c_name), header_text(), re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    names = []
    for declaration in filter(None, (d.strip() for d in body.split(";"))):
        first, *rest = declaration.split(",")
        names.append(re.findall(r"\w+", first)[-1])
        names += [re.findall(r"\w+", part)[-1] for part in rest]
    return names


def library_members(which: int) -> list[tuple[str, int, int]]:
    members, offset, size = [], ctypes.c_size_t(), ctypes.c_size_t()
    while (name := _native.lib.ek_struct_member(which, len(members), ctypes.byref(offset), ctypes.byref(size))):
        members.append((name.decode(), offset.value, size.value))
    return members


def test_library_reports_the_abi_version_of_the_header_and_of_the_binding():
    header_version = int(re.search(r"#define EK_ABI_VERSION (\d+)", header_text()).group(1))
    assert _native.lib.ek_abi_version() == header_version == _native.ABI_VERSION


@pytest.mark.parametrize("which, structure", _native.STRUCT_MIRRORS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_each_mirrored_struct_matches_the_library_member_by_member(which, structure):
    _native.check_struct_layout(_native.lib, which, structure)  # raises on any difference
    assert [m[0] for m in library_members(which)] == [f[0] for f in structure._fields_]
    assert _native.lib.ek_struct_size(which) == ctypes.sizeof(structure)


def test_struct_indices_are_the_headers():
    defined = dict(re.findall(r"#define (EK_STRUCT_\w+) (\d+)", header_text()))
    assert {name: int(value) for name, value in defined.items()} == {
        name: getattr(_native, name) for name in ("EK_STRUCT_TENSOR_DESC", "EK_STRUCT_MODEL_DESC", "EK_STRUCT_MODEL_MEMORY",
                                                  "EK_STRUCT_SEQ_INPUT")}


@pytest.mark.parametrize("which, c_name", [(_native.EK_STRUCT_TENSOR_DESC, "ek_tensor_desc"),
                                           (_native.EK_STRUCT_MODEL_DESC, "ek_model_desc"),
                                           (_native.EK_STRUCT_MODEL_MEMORY, "ek_model_memory"),
                                           (_native.EK_STRUCT_SEQ_INPUT, "ek_seq_input")])
def test_the_library_lists_every_member_the_header_declares(which, c_name):
    members = library_members(which)
    assert [m[0] for m in members] == header_struct_members(c_name)
    end = 0
    for name, offset, size in members:  # in order, no overlap, no room for a member left out
        assert end <= offset < end + MAX_ALIGNMENT, f"{c_name}.{name} at {offset}, previous member ends at {end}"
        end = offset + size
    assert end <= _native.lib.ek_struct_size(which) < end + MAX_ALIGNMENT


def test_the_mirrors_cover_every_struct_the_library_describes():
    described = [which for which in range(16) if _native.lib.ek_struct_size(which)]
    assert described == [which for which, _ in _native.STRUCT_MIRRORS]


def stale_tensor_desc(fields):
    return type("EkTensorDesc", (ctypes.Structure,), {"_fields_": fields})


GOOD_FIELDS = [("data", ctypes.c_void_p), ("n_rows", ctypes.c_int64), ("n_cols", ctypes.c_int64),
               ("type", ctypes.c_int32), ("reserved", ctypes.c_int32)]


def test_a_member_of_another_size_is_named_with_both_layouts():
    fields = [(n, ctypes.c_int32 if n == "n_rows" else t) for n, t in GOOD_FIELDS]
    with pytest.raises(NativeBuildError, match=r"EkTensorDesc\.n_rows: offset 8, size 8 in the native library; "
                                               r"offset 8, size 4 in edgesdk\._native"):
        _native.check_struct_layout(_native.lib, _native.EK_STRUCT_TENSOR_DESC, stale_tensor_desc(fields))


def test_a_renamed_member_is_named():
    fields = [("n_elems" if n == "n_cols" else n, t) for n, t in GOOD_FIELDS]
    with pytest.raises(NativeBuildError, match=r"EkTensorDesc member 2 is 'n_cols' in the native library, "
                                               r"'n_elems' in edgesdk\._native"):
        _native.check_struct_layout(_native.lib, _native.EK_STRUCT_TENSOR_DESC, stale_tensor_desc(fields))


def test_a_member_the_binding_lacks_is_named():
    with pytest.raises(NativeBuildError, match=r"EkTensorDesc\.reserved is in the native library, not in edgesdk\._native"):
        _native.check_struct_layout(_native.lib, _native.EK_STRUCT_TENSOR_DESC, stale_tensor_desc(GOOD_FIELDS[:-1]))


def test_a_member_the_library_lacks_is_named():
    fields = GOOD_FIELDS + [("flags", ctypes.c_int64)]
    with pytest.raises(NativeBuildError, match=r"EkTensorDesc\.flags is in edgesdk\._native, not in the native library"):
        _native.check_struct_layout(_native.lib, _native.EK_STRUCT_TENSOR_DESC, stale_tensor_desc(fields))


def test_a_library_from_before_the_abi_check_is_refused_as_a_stale_build():
    with pytest.raises(NativeBuildError, match="no ek_abi_version.*rebuild"):
        _native.check_abi(types.SimpleNamespace())


def test_a_library_of_another_abi_version_is_refused_with_both_versions():
    other = types.SimpleNamespace(ek_abi_version=lambda: _native.ABI_VERSION + 1)
    with pytest.raises(NativeBuildError, match=rf"ABI version {_native.ABI_VERSION + 1}.*expects {_native.ABI_VERSION}"):
        _native.check_abi(other)
