"""edgesdk.gguf reads what the gguf package writes, and agrees with the gguf
package's own reader on the real models."""
from __future__ import annotations

import gguf as gguf_pkg
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from edgesdk import gguf

# Q8_1 is 2 x f16 + 32 x int8 = 36 bytes in ggml (block_q8_1); gguf-py still
# lists the old 2 x f32 layout (40). It is an activation-only type that no
# model file stores.
KNOWN_TABLE_DIFFERENCES = {"Q8_1"}


def test_ggml_type_table_matches_the_gguf_package():
    ours = {t.name: (t.type_id, t.block_elems, t.block_bytes) for t in gguf.GGML_TYPES.values()}
    theirs = {t.name: (t.value, *GGML_QUANT_SIZES[t]) for t in GGMLQuantizationType if t in GGML_QUANT_SIZES}
    # Every type the installed gguf package knows, we know (older packages know fewer).
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    for name in theirs:
        if name not in KNOWN_TABLE_DIFFERENCES:
            assert ours[name] == theirs[name], name
    assert ours["Q8_1"] == (9, 32, 36)


SCALARS = {
    "v.u8": (np.uint8(250), GGUFValueType.UINT8), "v.i8": (np.int8(-100), GGUFValueType.INT8),
    "v.u16": (np.uint16(65000), GGUFValueType.UINT16), "v.i16": (np.int16(-32000), GGUFValueType.INT16),
    "v.u32": (np.uint32(4_000_000_001), GGUFValueType.UINT32), "v.i32": (np.int32(-2_000_000_001), GGUFValueType.INT32),
    "v.u64": (np.uint64(2**63 + 11), GGUFValueType.UINT64), "v.i64": (np.int64(-(2**62) - 5), GGUFValueType.INT64),
    "v.f32": (np.float32(3.14159), GGUFValueType.FLOAT32), "v.f64": (np.float64(-2.718281828459045), GGUFValueType.FLOAT64),
    "v.bool_t": (True, GGUFValueType.BOOL), "v.bool_f": (False, GGUFValueType.BOOL),
    "v.str": ("h\u00e9llo \u4e16\u754c \U0001F600", GGUFValueType.STRING), "v.empty_str": ("", GGUFValueType.STRING),
}
NUMERIC_ARRAY_TYPES = {
    GGUFValueType.UINT8: np.uint8, GGUFValueType.INT8: np.int8, GGUFValueType.UINT16: np.uint16,
    GGUFValueType.INT16: np.int16, GGUFValueType.UINT32: np.uint32, GGUFValueType.INT32: np.int32,
    GGUFValueType.UINT64: np.uint64, GGUFValueType.INT64: np.int64, GGUFValueType.FLOAT32: np.float32,
    GGUFValueType.FLOAT64: np.float64,
}


def _write_every_value_type(path, rng):
    writer = gguf_pkg.GGUFWriter(str(path), "llama")
    for key, (value, vtype) in SCALARS.items():
        writer.add_key_value(key, value, vtype)
    arrays = {}
    for vtype, dtype in NUMERIC_ARRAY_TYPES.items():
        info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
        values = (rng.integers(info.min, info.max, size=37, dtype=dtype, endpoint=True) if info
                  else rng.standard_normal(37).astype(dtype))
        key = f"a.{vtype.name.lower()}"
        writer.add_key_value(key, values.tolist(), GGUFValueType.ARRAY, sub_type=vtype)
        arrays[key] = values
    bools = rng.integers(0, 2, size=13).astype(bool)
    writer.add_key_value("a.bool", bools.tolist(), GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
    arrays["a.bool"] = bools
    strings = ["", "a", "\u00e9t\u00e9", "<|im_start|>", "x" * 1000] + [f"tok{i}" for i in range(50)]
    writer.add_key_value("a.string", strings, GGUFValueType.ARRAY, sub_type=GGUFValueType.STRING)

    tensors = {
        "f32.tail": (rng.standard_normal((3, 7)).astype(np.float32), None),
        "f16.vec": (rng.standard_normal(33).astype(np.float16), None),
        "i32.ids": (rng.integers(-1000, 1000, size=(2, 5), dtype=np.int32), None),
        "q8_0.w": (rng.integers(0, 256, size=(3, 2 * 34), dtype=np.uint8), GGMLQuantizationType.Q8_0),
        "q4_k.w": (rng.integers(0, 256, size=(2, 144), dtype=np.uint8), GGMLQuantizationType.Q4_K),
        "q6_k.w": (rng.integers(0, 256, size=(5, 2 * 210), dtype=np.uint8), GGMLQuantizationType.Q6_K),
        "q4_1.w": (rng.integers(0, 256, size=(7, 20), dtype=np.uint8), GGMLQuantizationType.Q4_1),
    }
    for name, (array, raw_dtype) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return arrays, strings, tensors


def test_every_value_type_and_several_tensor_types_round_trip(tmp_path, rng):
    path = tmp_path / "all.gguf"
    arrays, strings, tensors = _write_every_value_type(path, rng)
    with gguf.open(path) as f:
        assert f.version == 3
        assert f.architecture == "llama"
        for key, (value, vtype) in SCALARS.items():
            assert f.metadata_types[key] == int(vtype), key
            if vtype == GGUFValueType.FLOAT32:
                assert f.metadata[key] == pytest.approx(float(value), rel=0, abs=0), key
            else:
                assert f.metadata[key] == value and type(f.metadata[key]) is type(
                    value if isinstance(value, (bool, str)) else value.item()), key
        for key, values in arrays.items():
            got = f.metadata[key]
            assert isinstance(got, np.ndarray) and got.dtype == values.dtype, key
            np.testing.assert_array_equal(got, values)
        assert f.metadata["a.string"] == strings
        assert f.array_types["a.string"] == int(GGUFValueType.STRING)

        for name, (array, raw_dtype) in tensors.items():
            info = f.tensors[name]
            raw = array.tobytes()
            assert f.tensor_data(name).tobytes() == raw, name
            assert info.nbytes == len(raw)
            assert info.offset % f.alignment == 0
            if raw_dtype is None:
                assert info.shape == tuple(reversed(array.shape))
                np.testing.assert_array_equal(f.tensor_array(name), array)
            else:
                assert info.type_name == raw_dtype.name
                block_elems, block_bytes = GGML_QUANT_SIZES[raw_dtype]
                assert info.shape == (array.shape[1] // block_bytes * block_elems, array.shape[0])


def test_tensor_views_are_zero_copy_and_read_only(tmp_path, rng):
    path = tmp_path / "all.gguf"
    _write_every_value_type(path, rng)
    with gguf.open(path) as f:
        view = f.tensor_data("q8_0.w")
        assert not view.flags.writeable and not view.flags.owndata
        assert np.shares_memory(view, f.data)
        arr = f.tensor_array("f32.tail")
        assert np.shares_memory(arr, f.data) and not arr.flags.writeable


def test_custom_alignment_from_the_writer_is_read(tmp_path, rng):
    path = tmp_path / "a64.gguf"
    writer = gguf_pkg.GGUFWriter(str(path), "llama")
    writer.add_custom_alignment(64)
    a = rng.standard_normal(5).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32)
    writer.add_tensor("a", a)
    writer.add_tensor("b", b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with gguf.open(path) as f:
        assert f.alignment == 64 and f.tensors["b"].offset % 64 == 0
        np.testing.assert_array_equal(f.tensor_array("b"), b)


def _assert_agrees_with_gguf_reader(path):
    theirs = gguf_pkg.GGUFReader(str(path))
    with gguf.open(path) as ours:
        fields = {k: v for k, v in theirs.fields.items() if not k.startswith("GGUF.")}
        assert list(ours.metadata) == list(fields)
        for key, field in fields.items():
            assert ours.metadata_types[key] == int(field.types[0]), key
            value = ours.metadata[key]
            expected = field.contents()
            if isinstance(value, np.ndarray):
                assert ours.array_types[key] == int(field.types[-1])
                np.testing.assert_array_equal(value, np.asarray(expected, dtype=value.dtype), err_msg=key)
            else:
                assert value == expected, key
        assert list(ours.tensors) == [t.name for t in theirs.tensors]
        for t in theirs.tensors:
            info = ours.tensors[t.name]
            assert info.shape == tuple(int(d) for d in t.shape), t.name
            assert info.type_id == int(t.tensor_type) and info.type_name == t.tensor_type.name
            assert info.offset == t.data_offset and info.nbytes == t.n_bytes, t.name
            assert info.n_elements == t.n_elements
        # Spot-check data identity on the first and last tensor.
        for t in (theirs.tensors[0], theirs.tensors[-1]):
            assert ours.tensor_data(t.name).tobytes() == t.data.tobytes()


@pytest.mark.models
def test_agrees_with_gguf_reader_on_smollm2(smollm2_path):
    _assert_agrees_with_gguf_reader(smollm2_path)


@pytest.mark.models
@pytest.mark.slow
def test_agrees_with_gguf_reader_on_gemma3(gemma3_path):
    _assert_agrees_with_gguf_reader(gemma3_path)


@pytest.mark.models
def test_smollm2_header_facts(smollm2_path):
    with gguf.open(smollm2_path) as f:
        assert f.architecture == "llama"
        assert len(f.metadata["tokenizer.ggml.tokens"]) == 49152
        assert f.metadata["llama.block_count"] == 30
        types = {t.type_name for t in f.tensors.values()}
        assert {"Q4_1", "Q8_0", "F32"} <= types
