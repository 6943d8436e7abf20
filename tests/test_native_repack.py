"""The native engine with repacked weights: same logits as the GGUF-layout engine and as an
independent numpy forward pass, repacked copies counted as owned memory, and the repacked
tensors' file pages released from the resident set."""
from __future__ import annotations

import dataclasses
import gc
import math

import gguf
import numpy as np
import pytest

from edgesdk import gguf as ek_gguf
from edgesdk.backends.native import NativeBackend, memory_requirements
from kernel_reference import dequantize, random_blocks
import proc_maps
from tiny_gguf import TinyConfig, reference_logits, tiny_tensors

# Both engines quantize the same activations to int8 and differ only in float summation
# order (repacked kernels sum 8-16 rows per vector): most logits agree to ~1e-5, but where a
# value sits on an int8 rounding boundary the two round it apart, and that step reaches later
# positions through the KV cache (measured on Q4_0: up to 0.14, medians 0.005 batched and
# 0.03 token by token, where the step comes earlier).
REPACK_VS_PLAIN_MEDIAN_ATOL = 5e-2
# Against a float64 forward pass on the dequantized weights: every matmul input rounded to
# int8 (up to 1/254 of its block's largest value) through 2 layers and the head; logits reach
# ~6 and the largest error measured is 0.20 (the F32 engine on unquantized weights: 0.004).
QUANT_ACT_ATOL = 3e-1
# Pages of the mapping that may stay resident besides the mapped tensors and the header: the
# load reads each norm vector once (to copy it), and a page fault maps the neighbouring pages
# already in the page cache (fault_around_bytes, 64 KiB by default; on kernels with large page-cache
# folios, the folio around the fault), pieces of the repacked tensors next to it (measured 9 MiB of
# SmolLM2's 98 MiB file resident, 100% without the release).
RESIDUAL_PAGES_PER_TENSOR = 16
PAGE = 4096

MATRIX_TYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
                "q4_1": gguf.GGMLQuantizationType.Q4_1, "q5_0": gguf.GGMLQuantizationType.Q5_0,
                "q4_k": gguf.GGMLQuantizationType.Q4_K, "q6_k": gguf.GGMLQuantizationType.Q6_K}
# gguf cannot quantize to these: their blocks are random (kernel_reference.random_blocks), and
# the model is as wide as one 256-value super-block.
RANDOM_BLOCK_TYPES = ("q4_k", "q6_k")
WIDE_CONFIG = TinyConfig(arch="llama", n_embd=256, n_ff=256, n_head=4, n_head_kv=2, head_dim=64)


def random_matrix(qtype, shape, rng) -> np.ndarray:
    """Raw blocks of qtype for a (rows, cols) matrix whose values have about unit-scale rows
    (standard deviation 1/sqrt(cols), as tiny_tensors' matrices)."""
    name = qtype.name
    probe = dequantize(name, random_blocks(name, shape[0] * shape[1], np.random.default_rng(0)))
    scale = 0.05 / (probe.std() * math.sqrt(shape[1]))  # random_blocks' values are linear in its scale
    return random_blocks(name, shape[0] * shape[1], rng, scale=scale).reshape(shape[0], -1)


def write_quantized_tiny(path, cfg: TinyConfig, qtype) -> dict:
    """cfg's tiny model with every matrix in qtype; returns the dequantized tensors (the reference's weights)."""
    tensors = tiny_tensors(cfg)
    a = cfg.arch
    w = gguf.GGUFWriter(str(path), a)
    for key, value in {f"{a}.embedding_length": cfg.n_embd, f"{a}.block_count": cfg.n_layer,
                       f"{a}.feed_forward_length": cfg.n_ff, f"{a}.attention.head_count": cfg.n_head,
                       f"{a}.attention.head_count_kv": cfg.n_head_kv, f"{a}.attention.key_length": cfg.head_dim,
                       f"{a}.attention.value_length": cfg.head_dim, f"{a}.context_length": 256}.items():
        w.add_uint32(key, value)
    w.add_float32(f"{a}.rope.freq_base", cfg.rope_base)
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", cfg.eps)
    dequantized = {}
    rng = np.random.default_rng(11)
    for name, arr in tensors.items():
        if arr.ndim == 2:
            random_raw = qtype.name.lower() in RANDOM_BLOCK_TYPES
            raw = random_matrix(qtype, arr.shape, rng) if random_raw else gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
            dequantized[name] = gguf.quants.dequantize(raw, qtype).reshape(arr.shape).astype(np.float32)
        else:
            w.add_tensor(name, arr)
            dequantized[name] = arr
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dequantized


@pytest.mark.parametrize("qtype", list(MATRIX_TYPES))
@pytest.mark.parametrize("tied", [True, False])
def test_repacked_engine_matches_plain_engine_and_numpy(tmp_path, qtype, tied):
    # n_vocab 97 and n_ff 96: row counts that are not multiples of the 8/16-row groups.
    cfg = TinyConfig(arch="llama", tied=tied)
    if qtype in RANDOM_BLOCK_TYPES:
        cfg = dataclasses.replace(WIDE_CONFIG, tied=tied)
    path = tmp_path / f"tiny-{qtype}.gguf"
    weights = write_quantized_tiny(path, cfg, MATRIX_TYPES[qtype])
    ids = list(np.random.default_rng(5).integers(0, cfg.n_vocab, 11))
    ref = reference_logits(cfg, weights, ids)
    out = {}
    for repack in (False, True):
        with NativeBackend(path, n_ctx=32, threads=2, n_batch=4, repack=repack) as be:
            owned = be.memory_used()["weights_owned"]
            batched = be.eval(ids, 0, all_logits=True)
            be.eval(ids[:5], 0)
            stepped = np.array([be.eval([t], 5 + i) for i, t in enumerate(ids[5:])])
        out[repack] = (owned, batched, stepped)
    f = ek_gguf.open(path)
    try:
        vector_bytes = sum(4 * t.n_elements for t in f.tensors.values() if len(t.shape) == 1)
    finally:
        f.close()
    assert out[False][0] == vector_bytes      # the plain engine owns only its copies of the norm vectors
    assert out[True][0] > vector_bytes
    for k in (1, 2):
        diff = np.abs(out[True][k] - out[False][k])
        assert np.median(diff) < REPACK_VS_PLAIN_MEDIAN_ATOL
        assert diff.max() < QUANT_ACT_ATOL
    np.testing.assert_allclose(out[True][1], ref, atol=QUANT_ACT_ATOL)
    np.testing.assert_allclose(out[True][2], ref[5:], atol=QUANT_ACT_ATOL)


def test_memory_requirements_count_repacked_matrices_as_owned(tmp_path):
    cfg = TinyConfig(arch="llama", tied=False)
    path = tmp_path / "tiny-q8.gguf"
    write_quantized_tiny(path, cfg, MATRIX_TYPES["q8_0"])
    f = ek_gguf.open(path)
    try:
        matrix_bytes = sum(t.nbytes for t in f.tensors.values() if len(t.shape) == 2)
        vector_bytes = sum(t.nbytes for t in f.tensors.values() if len(t.shape) == 1)
        embd_bytes = f.tensors["token_embd.weight"].nbytes
    finally:
        f.close()
    plain = memory_requirements(path, n_ctx=32, repack=False)
    packed = memory_requirements(path, n_ctx=32, repack=True)
    # Norm vectors are copies (F32 in this file) on both paths: no pass reads them in the mapping.
    assert plain["weights_mapped"] == matrix_bytes and plain["weights_owned"] == vector_bytes
    # An untied embedding is only looked up, a few rows at a time: it stays mapped.
    assert packed["weights_mapped"] == embd_bytes
    # Rows are padded to whole 8-row groups: 97 vocabulary rows (the output head) become 104.
    repacked = matrix_bytes - embd_bytes
    assert repacked <= packed["weights_owned"] - vector_bytes <= repacked * 104 / 97
    for repack, planned in ((False, plain), (True, packed)):
        with NativeBackend(path, n_ctx=32, threads=1, repack=repack) as be:
            used = be.memory_used()
        assert {k: used[k] for k in planned} == planned


def mapping_resident_bytes(start: int, length: int) -> int:
    """Resident bytes of this process's mappings over [start, start + length) (from /proc/self/smaps)."""
    return sum(int(fields["Rss"][0]) * 1024 for lo, hi, fields in proc_maps.mappings()
               if lo <= start < hi or start <= lo < start + length)


@pytest.mark.slow
def test_repacked_tensors_file_pages_leave_the_resident_set(smollm2_path):
    f = ek_gguf.open(smollm2_path)
    try:
        start = f.data.ctypes.data
        be = NativeBackend(f, n_ctx=64, threads=2, repack=True)
        try:
            loaded = mapping_resident_bytes(start, f.file_size)
            be.eval(list(range(100, 120)), 0)
            be.eval([7], 20)
            parts = be.memory_used()
            resident = mapping_resident_bytes(start, f.file_size)
            n_tensors = len(f.tensors)
        finally:
            be.close()
    finally:
        f.close()
    # SmolLM2's matrices are Q4_1 and Q8_0, which every x86 and NEON kernel family repacks.
    assert parts["weights_owned"] > 90 * 2**20
    allowed = parts["weights_mapped"] + f.data_offset + RESIDUAL_PAGES_PER_TENSOR * PAGE * n_tensors
    assert resident <= allowed, f"{resident} bytes of the file resident, expected at most {allowed}"
    # A pass reads nothing in the mapping (the tied embedding's rows come from its repacked copy):
    # a read there would map whole folios of released matrices again, beyond any plan.
    assert resident == loaded, f"the passes made {resident - loaded} bytes of the file resident again"
    gc.collect()
