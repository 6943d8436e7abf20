"""The ONNX export: GGUF blocks in MatMulNBits form without a changed value, the graph against the
float64 reference forward pass on tiny models of each architecture, the cache's keys and its
defences (a changed GGUF, a corrupt or half-written export), and the errors it raises.

References are independent of the exporter: edgesdk.kernels.dequantize (the C formats, "ours")
for weights, MatMulNBits' definition written out here in numpy, ONNX Runtime itself running a
MatMulNBits node, and tests/tiny_gguf.py's float64 forward pass.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import onnx  # in the test extra: a missing one is a broken install, not a skip
import onnxruntime as ort

from edgesdk import gguf as egguf, kernels, loading, onnx_export  # noqa: E402
from edgesdk.config import LoadConfig  # noqa: E402
from edgesdk.errors import (CorruptExportError, ExportError, InvalidArgumentError, ProviderUnavailableError,  # noqa: E402
                            UnsupportedModelError)
from edgesdk.onnx_export import ExportOptions  # noqa: E402
from edgesdk.onnx_export.graph import WEIGHT_ROWS_KEY  # noqa: E402
from edgesdk.onnx_export.weights import NBITS_FORMS, map_matrix  # noqa: E402
from tiny_gguf import TinyConfig, YarnConfig, reference_logits, write_tiny  # noqa: E402

# float32 logits of an F32 tiny model against the float64 reference: accumulation order only.
TINY_F32_ATOL = 2e-4
# The same with the cache stored as float16: keys and values rounded to 11 bits.
TINY_F16_ATOL = 2e-2

# Byte offsets of each type's float16 scale fields inside a block (the rest may be any bytes).
SCALE_FIELDS = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q8_0": (0,), "Q4_K": (0, 2), "Q6_K": (208,)}


SHARED_HOME = os.environ.get("EDGESDK_HOME")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Each test's exports under its own EDGESDK_HOME, except the real models' (see real_export).
    monkeypatch.setenv("EDGESDK_HOME", str(tmp_path / "home"))


def _random_blocks(type_name: str, n_blocks: int, rng) -> np.ndarray:
    t = egguf.GGML_TYPES_BY_NAME[type_name]
    raw = rng.integers(0, 256, size=(n_blocks, t.block_bytes), dtype=np.uint8)
    for at in SCALE_FIELDS[type_name]:
        scales = (rng.standard_normal(n_blocks) * 0.02).astype(np.float16)
        raw[:, at:at + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def _spec_dequantize(codes, scales, zero_points, bits, block, n_rows, n_cols, mins=None):
    """MatMulNBits' weight as its specification defines it: codes low-first along K, zero points
    per block (4-bit ones packed two to a byte), (code - zero_point) * scale; plus a block minimum."""
    k_blocks = n_cols // block
    codes = np.asarray(codes, np.uint8).reshape(n_rows, -1)
    if bits == 4:
        q = np.empty((n_rows, codes.shape[1] * 2), np.uint8)
        q[:, 0::2], q[:, 1::2] = codes & 15, codes >> 4
        zp_bytes = np.asarray(zero_points, np.uint8).reshape(n_rows, -1)
        zp = np.empty((n_rows, zp_bytes.shape[1] * 2), np.uint8)
        zp[:, 0::2], zp[:, 1::2] = zp_bytes & 15, zp_bytes >> 4
        zp = zp[:, :k_blocks]
    else:
        q, zp = codes, np.asarray(zero_points, np.uint8).reshape(n_rows, k_blocks)
    q = q.reshape(n_rows, k_blocks, block).astype(np.float32) - zp[:, :, None].astype(np.float32)
    w = q * np.asarray(scales, np.float32).reshape(n_rows, k_blocks)[:, :, None]
    if mins is not None:
        w = w + np.asarray(mins, np.float32).reshape(n_rows, k_blocks)[:, :, None]
    return w.reshape(n_rows, n_cols)


@pytest.mark.parametrize("type_name", sorted(NBITS_FORMS))
def test_each_gguf_type_maps_to_matmulnbits_without_changing_a_value(type_name, rng):
    t = egguf.GGML_TYPES_BY_NAME[type_name]
    n_rows, n_cols = 7, 3 * t.block_elems
    raw = _random_blocks(type_name, n_rows * n_cols // t.block_elems, rng)
    ours = kernels.dequantize(type_name, raw).reshape(n_rows, n_cols)
    m = map_matrix(type_name, raw, n_rows, n_cols)
    exported = _spec_dequantize(m.codes, m.scales, m.zero_points(), m.bits, m.block_size, n_rows, n_cols, m.mins)
    np.testing.assert_array_equal(exported, ours)


@pytest.mark.parametrize("type_name", sorted(NBITS_FORMS))
def test_onnx_runtime_reads_the_mapped_codes_as_ours(type_name, rng):
    # A = identity: each output is one weight times 1 plus zeros, so ORT's float32 product
    # (accuracy_level 0) gives back the weights it dequantized, to the bit.
    from onnx import TensorProto, helper, numpy_helper
    t = egguf.GGML_TYPES_BY_NAME[type_name]
    n_rows, n_cols = 5, 2 * max(t.block_elems, 32)
    raw = _random_blocks(type_name, n_rows * n_cols // t.block_elems, rng)
    m = map_matrix(type_name, raw, n_rows, n_cols)
    node = helper.make_node("MatMulNBits", ["A", "B", "scales", "zp"], ["Y"], domain="com.microsoft",
                            K=n_cols, N=n_rows, bits=m.bits, block_size=m.block_size, accuracy_level=0)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n_cols, n_cols])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n_cols, n_rows])],
                              [numpy_helper.from_array(m.codes, "B"), numpy_helper.from_array(m.scales, "scales"),
                               numpy_helper.from_array(m.zero_points(), "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=10)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"A": np.eye(n_cols, dtype=np.float32)})[0].T
    ours = kernels.dequantize(type_name, raw).reshape(n_rows, n_cols)
    if m.mins is None:
        np.testing.assert_array_equal(got, ours)
    else:   # the graph adds the minimums in a second product: (code * scale) + min, one rounding apart
        np.testing.assert_allclose(got + np.repeat(m.mins, m.block_size, axis=1), ours, rtol=0, atol=1e-6)


def _neox_order(n_heads, head_dim):
    # Norm-style RoPE pairs (2i, 2i+1) become (i, i + half): evens first, then odds, per head.
    within = np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
    return (np.arange(n_heads)[:, None] * head_dim + within).ravel()


@pytest.fixture(scope="module")
def real_export(tmp_path_factory):
    """Exports of the real models in the shared cache (made once, reused by later runs)."""
    made = {}

    def get(path):
        if path not in made:
            made[path] = onnx_export.cached(path, ExportOptions())
        return made[path]
    return get


def _real_export(real_export, path, monkeypatch):
    # The run's own cache, not the test's: the export is reused across runs.
    if SHARED_HOME is None:
        monkeypatch.delenv("EDGESDK_HOME")
    else:
        monkeypatch.setenv("EDGESDK_HOME", SHARED_HOME)
    return real_export(path)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_every_exported_weight_equals_ours(model, request, real_export, monkeypatch):
    path = request.getfixturevalue(model)
    export = _real_export(real_export, path, monkeypatch)
    proto = onnx.load(str(export.graph_path))
    from onnx import numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    rows_of = json.loads({p.key: p.value for p in proto.metadata_props}[WEIGHT_ROWS_KEY])
    nodes = {n.input[1]: n for n in proto.graph.node if n.op_type == "MatMulNBits"}
    checked = set()
    with egguf.open(path) as f:
        n_head = f.get(f"{f.architecture}.attention.head_count")
        n_head_kv = f.get(f"{f.architecture}.attention.head_count_kv")
        for base, parts in rows_of.items():
            arr = lambda suffix: numpy_helper.to_array(inits[base + suffix])  # noqa: E731
            node = nodes[base + ".codes"]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            n_cols, bits, block = attrs["K"], attrs["bits"], attrs["block_size"]
            codes, scales, zps = arr(".codes"), arr(".scales"), arr(".zero_points")
            mins = arr(".minsT").T if base + ".minsT" in inits else None
            for name, row0, count, permuted in parts:
                info = f.tensors[name]
                ours = kernels.dequantize(info.type_name, f.tensor_data(name)).reshape(count, n_cols)
                if permuted:
                    heads = n_head if name.endswith("attn_q.weight") else n_head_kv
                    ours = ours[_neox_order(heads, count // heads)]
                k_blocks = n_cols // block
                zp_row = k_blocks if bits == 8 else (k_blocks + 1) // 2
                for r in range(0, count, 16384):
                    rr = slice(row0 + r, row0 + min(count, r + 16384))
                    got = _spec_dequantize(codes[rr], scales[rr], zps[rr.start * zp_row:rr.stop * zp_row], bits,
                                           block, rr.stop - rr.start, n_cols, None if mins is None else mins[rr])
                    want = ours[r:r + 16384]
                    if mins is None:
                        np.testing.assert_array_equal(got, want, err_msg=name)
                    else:      # scale * code + min against our d * q + m: one rounding apart at most
                        np.testing.assert_allclose(got, want, rtol=0, atol=np.abs(want).max() * 2.0 ** -22,
                                                   err_msg=name)
                checked.add(name)
        matrices = {n for n, t in f.tensors.items() if len(t.shape) == 2}
    assert checked == matrices


def _tiny(tmp_path, cfg, name="tiny.gguf"):
    path = tmp_path / name
    tensors = write_tiny(path, cfg)
    return path, tensors


def _onnx_backend(path, n_ctx=64, kv_type="f32", **options):
    options.setdefault("accuracy_4bit", 0)
    options.setdefault("accuracy_8bit", 0)
    config = LoadConfig(backend="onnx", n_ctx=n_ctx, threads=1, kv_type=kv_type, options=options)
    return loading.prepare(path, config).open()


TINY_MODELS = {
    "llama": TinyConfig(arch="llama"),
    "qwen2": TinyConfig(arch="qwen2", tied=False),
    "gemma3": TinyConfig(arch="gemma3", n_layer=7),        # six sliding layers and a global one
    "llama-yarn": TinyConfig(arch="llama", yarn=YarnConfig(factor=4.0, original_context_length=32)),
}


@pytest.mark.parametrize("arch", sorted(TINY_MODELS))
def test_tiny_models_match_the_float64_reference(arch, tmp_path, rng):
    cfg = TINY_MODELS[arch]
    path, tensors = _tiny(tmp_path, cfg)
    ids = [int(i) for i in rng.integers(0, cfg.n_vocab, size=23)]
    want = reference_logits(cfg, tensors, ids)
    with _onnx_backend(path) as b:
        got = b.eval(ids, 0, all_logits=True)
        np.testing.assert_allclose(got, want, atol=TINY_F32_ATOL)
        # The same positions again, one token at a time from a reused prefix.
        b.eval(ids[:10], 0)
        for k, t in enumerate(ids[10:]):
            last = b.eval([t], 10 + k)
        np.testing.assert_allclose(last, want[-1], atol=TINY_F32_ATOL)
    with _onnx_backend(path, kv_type="f16") as b:
        np.testing.assert_allclose(b.eval(ids, 0, all_logits=True), want, atol=TINY_F16_ATOL)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_static_export_gives_the_dynamic_logits(arch, tmp_path, rng):
    cfg = TINY_MODELS[arch]
    path, tensors = _tiny(tmp_path, cfg)
    ids = [int(i) for i in rng.integers(0, cfg.n_vocab, size=29)]
    with _onnx_backend(path, n_ctx=40) as dyn, _onnx_backend(path, n_ctx=40, static=True, chunk=8) as fixed:
        assert fixed.static and not dyn.static
        want = dyn.eval(ids, 0, all_logits=True)
        np.testing.assert_allclose(fixed.eval(ids, 0, all_logits=True), want, atol=TINY_F32_ATOL)
        fixed.eval(ids[:13], 0)                          # a partial chunk, then one token at a time
        for k, t in enumerate(ids[13:]):
            last = fixed.eval([t], 13 + k)
        np.testing.assert_allclose(last, want[-1], atol=TINY_F32_ATOL)
        # A state saved by one shape restores in the other.
        dyn.eval(ids[:20], 0)
        fixed.load_state(dyn.save_state(), 20)
        np.testing.assert_allclose(fixed.eval(ids[20:], 20, all_logits=True), want[20:], atol=TINY_F32_ATOL)


def test_a_changed_gguf_gets_a_new_export_and_options_key_it(tmp_path):
    path, _ = _tiny(tmp_path, TinyConfig())
    first = onnx_export.cached(path, ExportOptions(n_ctx=64))
    assert onnx_export.cached(path, ExportOptions(n_ctx=64)).directory == first.directory
    assert onnx_export.cached(path, ExportOptions(n_ctx=64, kv_dtype="f32")).directory != first.directory
    write_tiny(path, TinyConfig(), tensors=None, override_meta={"llama.rope.freq_base": 20000.0})
    second = onnx_export.cached(path, ExportOptions(n_ctx=64))
    assert second.directory != first.directory and second.gguf_sha256 != first.gguf_sha256


def test_a_corrupt_cached_export_is_refused_naming_the_file(tmp_path):
    path, _ = _tiny(tmp_path, TinyConfig())
    export = onnx_export.cached(path, ExportOptions(n_ctx=64))
    data = export.directory / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(CorruptExportError, match="model.onnx.data"):
        onnx_export.cached(path, ExportOptions(n_ctx=64))
    # The backend loads through the same check: its own export, truncated.
    with _onnx_backend(path, n_ctx=64) as b:
        own = b.export.directory / "model.onnx.data"
    own.write_bytes(own.read_bytes()[:100])
    with pytest.raises(CorruptExportError, match="model.onnx.data"):
        _onnx_backend(path, n_ctx=64)
    (export.directory / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptExportError, match="manifest"):
        onnx_export.verify(export.directory)


def test_a_failed_export_leaves_nothing_under_its_name(tmp_path, monkeypatch):
    path, _ = _tiny(tmp_path, TinyConfig())

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(onnx, "save_model", fail)
    out = tmp_path / "exports" / "out"
    with pytest.raises(ExportError, match="No space left"):
        onnx_export.export(path, out)
    assert os.listdir(tmp_path / "exports") == []


def test_unsupported_architecture_and_tensor_type_are_named(tmp_path):
    path, _ = _tiny(tmp_path, TinyConfig(), "phi.gguf")
    write_tiny(path, TinyConfig(), arch_name="phi3")
    with egguf.open(path) as f:
        from edgesdk.onnx_export.graph import check_exportable
        from edgesdk.shape import read_shape
        with pytest.raises(UnsupportedModelError, match="phi3"):
            check_exportable(f, read_shape(f))
    with pytest.raises(UnsupportedModelError, match="IQ4_XS"):
        map_matrix("IQ4_XS", np.zeros(136, np.uint8), 1, 256, "blk.0.ffn_up.weight")


def test_an_unavailable_provider_is_a_typed_error_naming_it(tmp_path):
    path, _ = _tiny(tmp_path, TinyConfig())
    with pytest.raises(ProviderUnavailableError, match="NoSuchExecutionProvider"):
        loading.prepare(path, LoadConfig(backend="onnx", n_ctx=32, threads=1,
                                         options={"providers": ["NoSuchExecutionProvider"]}))
    with pytest.raises(InvalidArgumentError, match="static"):
        loading.prepare(path, LoadConfig(backend="onnx", n_ctx=32, threads=1, options={"static": "yes"}))


def test_export_onnx_command_writes_an_export_and_genai_config(tmp_path, capsys):
    from edgesdk import cli
    path, _ = _tiny(tmp_path, TinyConfig())
    out = tmp_path / "export"
    assert cli.main(["export-onnx", str(path), str(out), "--n-ctx", "64", "--genai-config"]) == 0
    assert sorted(os.listdir(out)) == ["genai_config.json", "manifest.json", "model.onnx", "model.onnx.data"]
    genai = json.loads((out / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["num_hidden_layers"] == 2
    onnx_export.verify(out)
    assert "dynamic graph" in capsys.readouterr().out
    assert cli.main(["export-onnx", str(path), str(out)]) == 2      # an existing directory is refused


def test_planned_initializer_bytes_match_the_export(tmp_path):
    from edgesdk.onnx_export.graph import initializer_bytes
    from edgesdk.shape import read_shape
    for arch in ("llama", "gemma3"):
        path, _ = _tiny(tmp_path, TINY_MODELS[arch], f"{arch}.gguf")
        options = ExportOptions(n_ctx=64)
        export = onnx_export.cached(path, options)
        with egguf.open(path) as f:
            planned = initializer_bytes(f, read_shape(f), options)
        assert abs(export.data_bytes - planned) <= 0.02 * planned


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_group_query_attention_graph_matches_the_float64_reference(arch, tmp_path, rng):
    # The attention="gqa" export (com.microsoft.GroupQueryAttention with its rotary and window).
    cfg = TINY_MODELS[arch]
    path, tensors = _tiny(tmp_path, cfg)
    ids = [int(i) for i in rng.integers(0, cfg.n_vocab, size=23)]
    want = reference_logits(cfg, tensors, ids)
    with _onnx_backend(path, attention="gqa") as b:
        assert b.export_options.attention == "gqa"
        np.testing.assert_allclose(b.eval(ids, 0, all_logits=True), want, atol=TINY_F32_ATOL)
        b.eval(ids[:10], 0)
        for k, t in enumerate(ids[10:]):
            last = b.eval([t], 10 + k)
        np.testing.assert_allclose(last, want[-1], atol=TINY_F32_ATOL)
    with pytest.raises(InvalidArgumentError, match="gqa"):
        _onnx_backend(path, attention="gqa", static=True)
