"""Malformed GGUF files are rejected with ModelFormatError naming the field and
the byte offset — never IndexError, MemoryError, a hang or a crash.

Every file is written here byte by byte (tests/gguf_craft.py), so each test
knows the offset of the field it broke.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgesdk import gguf
from edgesdk.errors import ModelFormatError
from gguf_craft import (ARRAY, BOOL, F32, FLOAT32, Q4_K, Q8_0, STRING, UINT8, UINT32, UINT64, gguf_file, gstr, kv,
                        kv_str_array, small_valid, tensor_info, u32, u64)

# Random 1-3 byte corruptions tried by the fuzz test; with a fixed seed this
# hits every byte of the ~600-byte file dozens of times in about 2 s.
FUZZ_CASES = 10000


@pytest.fixture
def ram_dir(tmp_path):
    """A directory in RAM when the machine has one: the loops below write thousands of small files."""
    if not (os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)):
        yield tmp_path
        return
    path = tempfile.mkdtemp(prefix="edgesdk-gguf-test-", dir="/dev/shm")
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def rejected(tmp_path, data: bytes, *patterns: str) -> str:
    """Write `data`, open it, expect ModelFormatError matching every regex in `patterns`."""
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError) as info:
        gguf.open(path)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in: {message}"
    return message


def one_tensor_file(dims, type_id, nbytes, *, offset=0, kvs=(), data=None):
    infos = [tensor_info("w", dims, type_id, offset)]
    return gguf_file(list(kvs), infos, data if data is not None else bytes(range(1, 256)) * (nbytes // 255 + 1))


# -- the valid baseline ----------------------------------------------------

def test_small_valid_file_opens_with_every_field(tmp_path):
    layout = small_valid()
    path = tmp_path / "ok.gguf"
    path.write_bytes(layout.data)
    with gguf.open(path) as f:
        assert f.version == 3
        assert f.metadata["t.u32"] == 4_000_000_000 and f.metadata["t.i64"] == -2**40
        assert f.metadata["t.bool"] is True
        assert f.metadata["tokenizer.ggml.tokens"] == ["a", "bc", "\u00e9", "<s>"]
        assert f.data_offset == layout.data_offset
        assert [t.offset - layout.data_offset for t in f.tensors.values()] == [0, 32, 128]
        assert f.tensors["b.weight"].nbytes == 68


# -- header ------------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 4, 8, 23])
def test_file_shorter_than_the_header_is_rejected(tmp_path, size):
    rejected(tmp_path, small_valid().data[:size], "too short for a GGUF header", f"byte offset {size}")


def test_bad_magic_is_rejected_at_offset_0(tmp_path):
    rejected(tmp_path, b"GGML" + small_valid().data[4:], "bad magic", "byte offset 0")


@pytest.mark.parametrize("version", [0, 1, 4, 5, 2**31])
def test_unsupported_versions_are_rejected_at_offset_4(tmp_path, version):
    data = small_valid().data
    rejected(tmp_path, data[:4] + u32(version) + data[8:], f"version {version}", "byte offset 4")


def test_big_endian_file_is_rejected_by_name(tmp_path):
    data = small_valid().data
    rejected(tmp_path, data[:4] + struct.pack(">I", 3) + data[8:], "big-endian", "byte offset 4")


def test_version_2_files_are_read(tmp_path):
    data = small_valid().data
    path = tmp_path / "v2.gguf"
    path.write_bytes(data[:4] + u32(2) + data[8:])
    assert gguf.open(path).version == 2


@pytest.mark.parametrize("n_tensors", [2**64 - 1, 2**21, 1000])
def test_absurd_tensor_counts_are_rejected(tmp_path, n_tensors):
    layout = small_valid()
    data = layout.data[:8] + u64(n_tensors) + layout.data[16:]
    rejected(tmp_path, data, f"tensor count {n_tensors}", "byte offset 8")


@pytest.mark.parametrize("n_kv", [2**64 - 1, 2**21, 1000])
def test_absurd_metadata_counts_are_rejected(tmp_path, n_kv):
    data = small_valid().data
    rejected(tmp_path, data[:16] + u64(n_kv) + data[24:], f"metadata count {n_kv}", "byte offset 16")


# -- metadata ---------------------------------------------------------------

def test_key_length_past_the_end_is_rejected(tmp_path):
    layout = gguf_file([u64(1000) + b"general.architecture"], [], b"")
    rejected(tmp_path, layout.data, "metadata key #0", "byte offset 32", "needs 1000 bytes")


def test_key_length_over_the_cap_is_rejected(tmp_path):
    layout = gguf_file([u64(2**40) + b"x" * 40], [], b"")
    rejected(tmp_path, layout.data, "metadata key #0", "byte offset 24", "exceeds the cap")


def test_string_value_length_past_the_end_is_rejected(tmp_path):
    entry = gstr("general.name") + u32(STRING) + u64(500) + b"abc"
    layout = gguf_file([entry], [], b"")
    value_offset = 24 + 8 + len("general.name") + 4
    rejected(tmp_path, layout.data, "value of 'general.name'", f"byte offset {value_offset + 8}")


def test_string_value_over_the_cap_is_rejected(tmp_path):
    entry = gstr("general.name") + u32(STRING) + u64(2**63) + b"abc" * 10
    value_offset = 24 + 8 + len("general.name") + 4
    rejected(tmp_path, gguf_file([entry], [], b"").data, "value of 'general.name'",
             f"byte offset {value_offset}", "exceeds the cap")


def test_numeric_array_length_past_the_end_is_rejected(tmp_path):
    entry = kv("tokenizer.ggml.scores", ARRAY, u32(FLOAT32) + u64(10_000) + b"\0" * 40)
    count_offset = 24 + 8 + len("tokenizer.ggml.scores") + 4 + 4
    rejected(tmp_path, gguf_file([entry], [], b"").data, "array data of 'tokenizer.ggml.scores'",
             f"byte offset {count_offset + 8}")


def test_array_length_over_the_cap_is_rejected(tmp_path):
    entry = kv("tokenizer.ggml.scores", ARRAY, u32(FLOAT32) + u64(2**62) + b"\0" * 40)
    count_offset = 24 + 8 + len("tokenizer.ggml.scores") + 4 + 4
    rejected(tmp_path, gguf_file([entry], [], b"").data, "array length", f"byte offset {count_offset}",
             "exceeds the cap")


def test_string_array_count_past_the_end_is_rejected(tmp_path):
    entry = kv("tokenizer.ggml.tokens", ARRAY, u32(STRING) + u64(1_000_000) + gstr("a") + gstr("b"))
    rejected(tmp_path, gguf_file([entry], [], b"").data, "string array 'tokenizer.ggml.tokens'", "byte offset")


def test_string_array_item_length_past_the_end_names_the_item(tmp_path):
    items = gstr("a") + gstr("bc") + u64(300) + b"xyz"
    entry = kv("tokenizer.ggml.tokens", ARRAY, u32(STRING) + u64(3) + items)
    items_offset = 24 + 8 + len("tokenizer.ggml.tokens") + 4 + 4 + 8
    third_offset = items_offset + 9 + 10
    rejected(tmp_path, gguf_file([entry], [], b"").data + b"\0" * 64, "item 2",
             f"byte offset {third_offset}", "runs past the end")


def test_string_array_item_length_that_wraps_is_rejected(tmp_path):
    items = gstr("a") + u64(2**64 - 9) + gstr("later") + gstr("more")
    entry = kv("tokenizer.ggml.tokens", ARRAY, u32(STRING) + u64(4) + items)
    items_offset = 24 + 8 + len("tokenizer.ggml.tokens") + 4 + 4 + 8
    rejected(tmp_path, gguf_file([entry], [], b"").data, "item 1", f"byte offset {items_offset + 9}",
             "exceeds the cap")


def test_string_array_item_with_invalid_utf8_names_the_item(tmp_path):
    entry = kv_str_array("tokenizer.ggml.tokens", ["ok", "\u00e9"])
    entry = entry.replace(b"\xc3\xa9", b"\xc3\x28")
    items_offset = 24 + 8 + len("tokenizer.ggml.tokens") + 4 + 4 + 8
    rejected(tmp_path, gguf_file([entry], [], b"").data, "item 1", f"byte offset {items_offset + 10}", "UTF-8")


def test_nested_array_is_rejected(tmp_path):
    entry = kv("t.nested", ARRAY, u32(ARRAY) + u64(1) + u32(UINT8) + u64(1) + b"\x01")
    rejected(tmp_path, gguf_file([entry], [], b"").data, "nested array", f"byte offset {24 + 8 + 8 + 4}")


@pytest.mark.parametrize("vtype", [13, 255, 2**32 - 1])
def test_unknown_value_type_is_rejected(tmp_path, vtype):
    entry = gstr("t.x") + u32(vtype) + b"\0" * 16
    rejected(tmp_path, gguf_file([entry], [], b"").data, f"unknown value type {vtype}",
             f"byte offset {24 + 8 + 3}")


def test_unknown_array_item_type_is_rejected(tmp_path):
    entry = kv("t.x", ARRAY, u32(99) + u64(1) + b"\0" * 16)
    rejected(tmp_path, gguf_file([entry], [], b"").data, "unknown array item type 99",
             f"byte offset {24 + 8 + 3 + 4}")


def test_bool_other_than_0_or_1_is_rejected(tmp_path):
    entry = kv("t.flag", BOOL, b"\x07")
    rejected(tmp_path, gguf_file([entry], [], b"").data, "bool value 7", f"byte offset {24 + 8 + 6 + 4}")


def test_duplicate_metadata_key_is_rejected(tmp_path):
    first = kv("general.name", STRING, gstr("a"))
    layout = gguf_file([first, kv("general.name", STRING, gstr("b"))], [], b"")
    rejected(tmp_path, layout.data, "duplicate metadata key 'general.name'",
             f"byte offset {layout.kv_offsets[1]}")


def test_empty_metadata_key_is_rejected(tmp_path):
    layout = gguf_file([kv("general.name", STRING, gstr("a")), kv("", UINT8, b"\x01")], [], b"")
    rejected(tmp_path, layout.data, "metadata key #1", "is empty", f"byte offset {layout.kv_offsets[1]}")


def test_key_that_is_not_utf8_is_rejected(tmp_path):
    layout = gguf_file([kv(b"general.\xff", UINT8, b"\x01")], [], b"")
    rejected(tmp_path, layout.data, "metadata key #0", "byte offset 24", "UTF-8")


# -- alignment ---------------------------------------------------------------

def test_alignment_of_the_wrong_type_is_rejected(tmp_path):
    layout = gguf_file([kv("general.alignment", UINT64, u64(32))], [], b"")
    rejected(tmp_path, layout.data, "general.alignment", "must be uint32", f"byte offset {24 + 8 + 17}")


@pytest.mark.parametrize("alignment", [0, 3, 48, 2**31])
def test_alignment_that_is_zero_or_not_a_power_of_two_is_rejected(tmp_path, alignment):
    layout = gguf_file([kv("general.alignment", UINT32, u32(alignment))], [], b"")
    rejected(tmp_path, layout.data, f"general.alignment .*is {alignment}", f"byte offset {24 + 8 + 17 + 4}")


def test_custom_alignment_is_honoured(tmp_path):
    kvs = [kv("general.alignment", UINT32, u32(64))]
    infos = [tensor_info("a", [4], F32, 0), tensor_info("b", [4], F32, 64)]
    layout = gguf_file(kvs, infos, bytes(range(16)) + b"\0" * 48 + bytes(range(16, 32)), alignment=64)
    path = tmp_path / "a64.gguf"
    path.write_bytes(layout.data)
    f = gguf.open(path)
    assert f.alignment == 64 and f.data_offset % 64 == 0
    assert f.tensor_data("b").tolist() == list(range(16, 32))


def test_tensor_offset_not_a_multiple_of_a_custom_alignment_is_rejected(tmp_path):
    kvs = [kv("general.alignment", UINT32, u32(64))]
    infos = [tensor_info("a", [4], F32, 0), tensor_info("b", [4], F32, 32)]
    layout = gguf_file(kvs, infos, bytes(range(1, 81)), alignment=64)
    offset_field = layout.info_offsets[1] + 8 + 1 + 4 + 8 + 4
    rejected(tmp_path, layout.data, "tensor 'b'", "data offset 32", f"byte offset {offset_field}",
             "alignment 64")


# -- tensor index ----------------------------------------------------------

def test_duplicate_tensor_name_is_rejected(tmp_path):
    infos = [tensor_info("w", [8], F32, 0), tensor_info("w", [8], F32, 32)]
    layout = gguf_file([], infos, bytes(range(1, 65)))
    rejected(tmp_path, layout.data, "duplicate tensor name 'w'", f"byte offset {layout.info_offsets[1]}")


def test_empty_tensor_name_is_rejected(tmp_path):
    layout = gguf_file([], [tensor_info("", [8], F32, 0)], bytes(range(1, 33)))
    rejected(tmp_path, layout.data, "tensor #0", "empty name", f"byte offset {layout.info_offsets[0]}")


@pytest.mark.parametrize("n_dims", [0, 5, 2**32 - 1])
def test_n_dims_outside_1_to_4_is_rejected(tmp_path, n_dims):
    info = gstr("w") + u32(n_dims) + u64(8) * 5 + u32(F32) + u64(0)
    layout = gguf_file([], [info], bytes(range(1, 33)))
    rejected(tmp_path, layout.data, f"n_dims is {n_dims}", f"byte offset {layout.info_offsets[0] + 9}")


@pytest.mark.parametrize("dims,bad", [([0], 0), ([8, 0], 1), ([8, 2**64 - 1], 1), ([2**63, 1], 0)])
def test_zero_or_negative_dimensions_are_rejected(tmp_path, dims, bad):
    layout = one_tensor_file(dims, F32, 32)
    dim_offset = layout.info_offsets[0] + 9 + 4 + 8 * bad
    rejected(tmp_path, layout.data, f"dimension {bad} is {dims[bad]}", f"byte offset {dim_offset}")


def test_dimensions_whose_product_overflows_are_rejected(tmp_path):
    layout = one_tensor_file([2**31, 2**31, 2**31, 2**31], F32, 32)
    rejected(tmp_path, layout.data, "element count overflows at dimension 1",
             f"byte offset {layout.info_offsets[0] + 9 + 4 + 8}")


@pytest.mark.parametrize("type_id,dim0,block", [(Q8_0, 48, 32), (Q4_K, 32, 256), (Q4_K, 300, 256)])
def test_first_dimension_not_a_multiple_of_the_block_is_rejected(tmp_path, type_id, dim0, block):
    layout = one_tensor_file([dim0, 2], type_id, 1024)
    rejected(tmp_path, layout.data, f"first dimension {dim0}", f"block size {block}",
             f"byte offset {layout.info_offsets[0] + 9 + 4}")


@pytest.mark.parametrize("type_id", [4, 5, 31, 42, 2**32 - 1])
def test_unknown_tensor_types_are_rejected(tmp_path, type_id):
    layout = one_tensor_file([32], type_id, 64)
    rejected(tmp_path, layout.data, f"unknown tensor type {type_id}",
             f"byte offset {layout.info_offsets[0] + 9 + 4 + 8}")


def test_unaligned_tensor_data_is_rejected(tmp_path):
    infos = [tensor_info("a", [4], F32, 0), tensor_info("b", [4], F32, 16)]
    layout = gguf_file([], infos, bytes(range(1, 65)))
    rejected(tmp_path, layout.data, "tensor 'b'", "data offset 16", "alignment 32",
             f"byte offset {layout.info_offsets[1] + 9 + 4 + 8 + 4}")


def test_overlapping_tensor_data_is_rejected(tmp_path):
    infos = [tensor_info("a", [16], F32, 0), tensor_info("b", [4], F32, 32)]  # a is 64 bytes
    layout = gguf_file([], infos, bytes(range(1, 129)))
    rejected(tmp_path, layout.data, "tensor 'b'", "overlaps or precedes tensor 'a'", "ends at 64",
             f"byte offset {layout.info_offsets[1] + 9 + 4 + 8 + 4}")


def test_tensors_out_of_file_order_are_rejected(tmp_path):
    infos = [tensor_info("a", [8], F32, 32), tensor_info("b", [8], F32, 0)]
    layout = gguf_file([], infos, bytes(range(1, 65)))
    rejected(tmp_path, layout.data, "tensor 'b'", "index order")


def test_tensor_data_past_the_end_is_rejected(tmp_path):
    layout = one_tensor_file([64], F32, 255, data=bytes(range(1, 200)))  # needs 256 bytes, has 199
    start = layout.data_offset
    rejected(tmp_path, layout.data, "tensor 'w'", f"\\[{start}, {start + 256}\\)", "past the end",
             f"byte offset {layout.info_offsets[0] + 9 + 4 + 8 + 4}")


def test_tensor_offset_near_2_to_64_is_rejected(tmp_path):
    layout = one_tensor_file([8], F32, 32, offset=2**64 - 32)
    rejected(tmp_path, layout.data, "tensor 'w'", "past the end")


def test_tensor_index_ending_past_the_file_is_rejected(tmp_path):
    layout = one_tensor_file([8], F32, 0, data=b"")
    rejected(tmp_path, layout.data[:-1], "byte offset")


# -- truncation and corruption everywhere ----------------------------------------

def test_truncation_at_every_byte_offset_is_rejected(ram_dir):
    data = small_valid().data
    path = ram_dir / "cut.gguf"
    for size in range(len(data)):
        path.write_bytes(data[:size])
        with pytest.raises(ModelFormatError, match="byte offset") as info:
            gguf.open(path)
        assert str(path) in str(info.value)


def test_random_byte_corruption_gives_only_format_errors_or_a_consistent_file(ram_dir):
    data = small_valid().data
    rng = np.random.default_rng(2024)
    path = ram_dir / "fuzz.gguf"
    outcomes = {"rejected": 0, "opened": 0}
    for _ in range(FUZZ_CASES):
        corrupt = bytearray(data)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            corrupt[pos] = rng.integers(0, 256)
        path.write_bytes(corrupt)
        try:
            f = gguf.open(path)
        except ModelFormatError as exc:
            assert "byte offset" in str(exc), str(exc)
            outcomes["rejected"] += 1
            continue
        for info in f.tensors.values():
            assert info.offset + info.nbytes <= len(corrupt)
            assert f.tensor_data(info.name).nbytes == info.nbytes
        f.close()
        outcomes["opened"] += 1
    # Both paths must have been exercised for the test to mean anything.
    assert outcomes["rejected"] > FUZZ_CASES // 10 and outcomes["opened"] > FUZZ_CASES // 10, outcomes


def test_a_directory_or_missing_file_is_a_format_error(tmp_path):
    with pytest.raises(ModelFormatError, match="cannot open"):
        gguf.open(tmp_path / "missing.gguf")
    with pytest.raises(ModelFormatError, match="cannot open"):
        gguf.open(tmp_path)


def test_key_longer_than_the_specification_allows_is_rejected(tmp_path):
    layout = gguf_file([kv("k" * 65536, UINT8, b"\x01")], [], b"")
    rejected(tmp_path, layout.data, "metadata key #0", "byte offset 24", "65536 bytes")


def test_tensor_name_longer_than_64_bytes_is_rejected(tmp_path):
    layout = gguf_file([], [tensor_info("t" * 65, [8], F32, 0)], bytes(range(1, 33)))
    rejected(tmp_path, layout.data, "tensor #0 name", f"byte offset {layout.info_offsets[0]}", "65 bytes")


def test_file_without_tensors_may_end_right_after_its_metadata(tmp_path):
    path = tmp_path / "vocab.gguf"
    data = gguf_file([kv_str_array("tokenizer.ggml.tokens", ["a", "b", "c"])], [], b"").data
    path.write_bytes(data.rstrip(b"\0"))
    with gguf.open(path) as f:
        assert f.metadata["tokenizer.ggml.tokens"] == ["a", "b", "c"] and f.tensors == {}
