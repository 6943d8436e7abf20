"""The CUDA kernel layer (native/cuda/) and the cuda backend.

Without a GPU: the sources compile with nvcc for sm_87 (Jetson Orin) and sm_90 (H100/H200), built
once per source hash under $EDGESDK_HOME; the GPU layouts decode on the host, by the functions the
kernels use, to ek_dequantize's floats and the numpy reference's bit for bit; the DP4A kernel's
block arithmetic, run on the host, to the exact dot of its quantized operands; the library loads on
a machine without a driver and reports no device; the engine's memory needs and the plans for
unified and discrete memory, and llama.cpp's layer offload.
With a GPU (tools/cuda_check.py runs these): every product path against the CPU engine for each
type and m = 1, 8, 512, and the real models' logits, greedy text and sessions against the native
backend. Only those skip here, with the reason.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from edgesdk import kernels, memory, registry
from kernel_reference import BLOCKS, dequantize as numpy_dequantize, matmul_error_bound, random_blocks

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K", "F16", "F32")
ROWS = 37                      # not a multiple of any tile (64) or warp group (4)
COLS = {"Q4_K": 768, "Q6_K": 768}   # 3 super-blocks; 32-blocks get 5 (odd) below
COLS_32 = 160
# The CPU engine and the GPU quantize activations identically and sum in another order: both
# are held to the 8-bit activation bound (kernel_reference.matmul_error_bound) and to each other.
# MMA rounds weights and x to f16 (11-bit mantissa): bound by |w| |x| 2^-10 per product.
MMA_REL = 2.0 ** -10
# f32 sums of a few hundred products against float64: relative to sum |w x|.
F32_SUM_REL = 1e-5
# Greedy tokens compared with the CPU engine's; they may part only at a near-tie, where the CPU's
# best two logits are this close (the engines' summation orders differ).
GREEDY_TOKENS = 24
NEAR_TIE = 0.1
# The same prompt through MMA (f16 activations) and token by token through DP4A (8-bit ones): the
# two roundings differ as the CPU engine's two ISAs' summation orders do, a little more; a broken
# path lands far beyond (KL of nats, top-1 near 0). Mean KL 0.02 is ~10x the 8-bit floor.
PATHS_MAX_KL = 0.02
PATHS_MIN_TOP1 = 0.9


# What the library is built for here: sm_87 and sm_90 always (the compile test), plus what
# EDGESDK_CUDA_ARCHS adds (tools/cuda_check.py adds the GPU's own).
ARCHS = tuple(dict.fromkeys(("87", "90") + tuple(a for a in os.environ.get("EDGESDK_CUDA_ARCHS", "").split(",") if a)))


def _build_module():
    spec = importlib.util.spec_from_file_location("build_cuda", ROOT / "tools" / "build_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cuda_library():
    """libedgecuda.so for sm_87 + sm_90, built once per source hash, and made the one _cuda loads."""
    build = _build_module()
    if build.find_nvcc() is None:
        pytest.fail("nvcc not found: tools/test.sh puts the CUDA compiler on PATH (see README 'NVIDIA GPUs')")
    path = build.cached_build(str(registry.home() / "cuda-build"), ARCHS)
    from edgesdk import _cuda
    before = os.environ.get("EDGESDK_CUDA_LIBRARY")
    os.environ["EDGESDK_CUDA_LIBRARY"] = path
    _cuda._lib = None
    yield path
    _cuda._lib = None
    if before is None:
        del os.environ["EDGESDK_CUDA_LIBRARY"]
    else:
        os.environ["EDGESDK_CUDA_LIBRARY"] = before


@pytest.fixture(scope="session")
def gpu(cuda_library):
    from edgesdk import _cuda
    count, reason = _cuda.device_count()
    if count == 0:
        pytest.skip(f"no CUDA device: {reason}")
    supported, why = _cuda.device_supported(0)
    if not supported:
        pytest.skip(f"no CUDA device the library was built for ({ARCHS}; EDGESDK_CUDA_ARCHS adds others): {why}")
    return _cuda.device_info(0)


def _cols(type_name: str) -> int:
    return COLS.get(type_name, COLS_32)


def _matrix(type_name: str, rng, n_rows: int = ROWS):
    n_cols = _cols(type_name)
    raw = random_blocks(type_name, n_rows * n_cols, rng)
    return raw, n_rows, n_cols


def test_cuda_sources_compile_for_sm87_and_sm90(cuda_library):
    blob = Path(cuda_library).read_bytes()
    for arch in ("sm_87", "sm_90"):
        assert arch.encode() in blob, f"no {arch} device code in {cuda_library}"
    from edgesdk import _cuda, _native
    assert _cuda.library().ec_abi_version() == _cuda.ABI_VERSION
    # the model description the cuda backend hands over is the native library's, byte for byte
    for which, structure in _native.STRUCT_MIRRORS[:2]:
        assert _cuda.library().ec_struct_size(which) == _native.lib.ek_struct_size(which) == ctypes.sizeof(structure)


@pytest.mark.parametrize("type_name", TYPES)
def test_gpu_layout_decodes_to_ek_dequantize_bit_for_bit(cuda_library, type_name, rng):
    from edgesdk import _cuda
    raw, n_rows, n_cols = _matrix(type_name, rng)
    type_id = kernels.type_id(type_name)
    layout = _cuda.layout_from_gguf(type_id, raw, n_rows, n_cols)
    assert layout.nbytes == _cuda.layout_bytes(type_id, n_rows, n_cols)
    decoded = _cuda.layout_dequantize(type_id, layout, n_rows, n_cols)
    cpu = kernels.dequantize(type_id, raw).reshape(n_rows, n_cols)
    reference = numpy_dequantize(type_name, raw).reshape(n_rows, n_cols).astype(np.float32)
    assert np.array_equal(decoded.view(np.uint32), cpu.view(np.uint32))
    assert np.array_equal(decoded.view(np.uint32), reference.view(np.uint32))
    # a slice of rows decodes alone (the embedding lookup's path)
    assert np.array_equal(_cuda.layout_dequantize(type_id, layout, n_rows, n_cols, 5, 3), cpu[5:8])


Q8_32 = np.dtype([("d", "<f4"), ("s", "<f4"), ("qs", "i1", 32)])
Q8_K = np.dtype([("d", "<f4"), ("qs", "i1", 256), ("bsums", "<i2", 16)])


def quantize_activations(type_name: str, x: np.ndarray):
    """x as the CPU engine's 8-bit activation blocks (d = max|x| / 127, q = round-half-even(x * 127 / max|x|)),
    written here from that definition, and the values they stand for (float64)."""
    block = 256 if type_name in ("Q4_K", "Q6_K") else 32
    xb = x.astype(np.float32).reshape(-1, block)
    amax = np.abs(xb).max(axis=1)
    inv = np.where(amax != 0, np.float32(127.0) / np.where(amax != 0, amax, 1), 0).astype(np.float32)
    q = np.rint(xb * inv[:, None]).astype(np.int8)
    d = (amax / np.float32(127.0)).astype(np.float32)
    if block == 32:
        out = np.zeros(len(xb), Q8_32)
        out["d"], out["qs"], out["s"] = d, q, d * q.sum(axis=1).astype(np.float32)
    else:
        out = np.zeros(len(xb), Q8_K)
        out["d"], out["qs"], out["bsums"] = d, q, q.reshape(-1, 16, 16).sum(axis=2, dtype=np.int16)
    return out, (d.astype(np.float64)[:, None] * q).reshape(x.shape)


@pytest.mark.parametrize("type_name", [t for t in TYPES if t not in ("F16", "F32")])
def test_dp4a_block_dots_equal_the_exact_dot_of_the_quantized_operands(cuda_library, type_name, rng):
    """The DP4A kernel's per-block arithmetic (nibble and fifth-bit unpacking, Q4_K's scales and mins,
    Q6_K's two-bit planes, the offsets folded into s) run on the host: it must give the float64 dot
    of the dequantized weight with the dequantized 8-bit activations, to f32 summation rounding."""
    from edgesdk import _cuda
    raw, n_rows, n_cols = _matrix(type_name, rng)
    type_id = kernels.type_id(type_name)
    m = 3
    x = (rng.normal(size=(m, n_cols)) * rng.uniform(0.1, 10, size=(m, 1))).astype(np.float32)
    x[1, :32] = 0.0   # a block of zeros: d = 0, nothing divided by it
    xq, x_values = quantize_activations(type_name, x)
    w = numpy_dequantize(type_name, raw).reshape(n_rows, n_cols).astype(np.float64)
    y = _cuda.dot_host(type_id, _cuda.layout_from_gguf(type_id, raw, n_rows, n_cols), n_rows, n_cols, xq, m)
    exact = x_values @ w.T
    scale = np.abs(x_values) @ np.abs(w).T
    assert np.all(np.abs(y - exact) <= F32_SUM_REL * scale + 1e-6)


def test_gpu_layout_sizes_keep_gguf_bytes_but_q4_k_scales(cuda_library):
    from edgesdk import _cuda
    for type_name in ("Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q6_K", "F16", "F32"):
        elems, block_bytes = BLOCKS[type_name]
        n_cols = _cols(type_name)
        assert _cuda.layout_bytes(kernels.type_id(type_name), 3, n_cols) == 3 * n_cols // elems * block_bytes
    # Q4_K's 12 packed scale bytes become 8 scales + 8 mins
    assert _cuda.layout_bytes(kernels.type_id("Q4_K"), 3, 512) == 3 * 2 * 148


def test_gpu_layout_refuses_shapes_and_types_it_has_no_layout_for(cuda_library):
    from edgesdk import _cuda
    from edgesdk.errors import UnsupportedModelError
    assert _cuda.layout_bytes(kernels.type_id("Q4_K"), 2, 320) == 0       # not whole super-blocks
    assert _cuda.layout_bytes(kernels.type_id("F16"), 2, 48) == 0          # F16 rows in 32s
    assert _cuda.layout_bytes(kernels.type_id("BF16"), 2, 64) == 0
    with pytest.raises(UnsupportedModelError, match="no GPU layout"):
        _cuda.layout_from_gguf(kernels.type_id("BF16"), np.zeros(256, np.uint8), 2, 64)


def test_library_loads_without_a_driver_and_reports_why_there_is_no_device(cuda_library):
    from edgesdk import _cuda
    from edgesdk.backends.cuda import CudaBackend
    count, reason = _cuda.device_count()
    if count:
        pytest.skip("a CUDA device is present: this checks the machine without one")
    assert reason
    status = CudaBackend.available()
    assert not status and status.reason.startswith("no CUDA device:")


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_engine_memory_needs_count_every_tensor_in_gpu_layout_and_an_f16_cache(cuda_library, model, request):
    """ec_model_memory_needs is host code: the plan a GPU machine would load with, checked here."""
    from edgesdk import _cuda, gguf
    from edgesdk.backends.native import _check
    from edgesdk.config import LoadConfig
    path = request.getfixturevalue(model)
    config = LoadConfig(backend="native", n_ctx=1024, threads=1, n_batch=512)
    checked = _check(path, config)
    try:
        checked.desc.configure(config, repack=False)
        mem = _cuda.EcModelMemory()
        _cuda.check(_cuda.library().ec_model_memory_needs(ctypes.byref(checked.desc.desc), ctypes.byref(mem)), "needs")
        shape, f = checked.source.shape, checked.source.file
        align = lambda n: -(-n // 256) * 256  # noqa: E731  (the engine's sub-allocation alignment)
        matrices = [align(_cuda.layout_bytes(t.type_id, t.shape[1], t.shape[0]))
                    for t in f.tensors.values() if len(t.shape) == 2]
        vectors = [align(4 * t.shape[0]) for name, t in f.tensors.items() if len(t.shape) == 1
                   and name != "rope_freqs.weight"]   # rope_freqs stays on the host: the angles are computed there
        assert mem.weights == sum(matrices) + sum(vectors)
        assert mem.host_staging == max(matrices)
        assert mem.kv_cache == 2 * shape.n_layer * 1024 * shape.n_head_kv * shape.head_dim_k * 2
        assert 0 < mem.scratch < mem.weights
        assert mem.host_pinned == 2 * align(4 * 512) + align(4 * 2 * 512 * shape.n_rot)  # ids, positions, cos|sin
    finally:
        checked.desc = None
        checked.source.file.close()


def test_unified_memory_counts_weights_once_in_the_machine_budget():
    device = {"weights": 900 * memory.MIB, "kv_cache": 100 * memory.MIB, "scratch": 20 * memory.MIB}
    host = {"staging": 30 * memory.MIB, "pinned": 1 * memory.MIB, "logits": 2 * memory.MIB,
            "tokenizer": 10 * memory.MIB, "runtime": 200 * memory.MIB}
    unified = memory.gpu_plan_parts(device, host, unified=True)
    assert unified["weights_mapped"] == 0 and unified["weights_owned"] == device["weights"]
    assert sum(unified.values()) == sum(device.values()) + sum(host.values())
    discrete = memory.gpu_plan_parts(device, host, unified=False)
    assert discrete["weights_owned"] == device["weights"] and discrete["kv_cache"] == device["kv_cache"]
    assert discrete["scratch"] == device["scratch"] + memory.CUDA_CONTEXT_DEVICE_BYTES
    machine = memory.Budget(8 << 30, "MemAvailable", None)
    assert memory.gpu_budget(machine, "cuda:0", 2 << 30, unified=True) is machine
    on_device = memory.gpu_budget(machine, "cuda:0 (H200)", 2 << 30, unified=False)
    assert on_device.resident == 2 << 30 and "cuda:0" in on_device.resident_source
    given = memory.Budget(1 << 30, "max_memory", None, explicit=True)
    assert memory.gpu_budget(given, "cuda:0", 2 << 30, unified=False) is given


def test_jetson_plan_refuses_before_loading_when_weights_do_not_fit_beside_the_os():
    from edgesdk.errors import MemoryBudgetError
    device = {"weights": 3 << 30, "kv_cache": 200 * memory.MIB, "scratch": 50 * memory.MIB}
    host = {"staging": 100 * memory.MIB, "pinned": memory.MIB, "logits": memory.MIB, "tokenizer": 30 * memory.MIB,
            "runtime": 200 * memory.MIB}
    from edgesdk.shape import ModelShape  # noqa: F401  (the request is built as loading builds it)

    class Shape:
        context_length = 2048

    request = memory.PlanRequest(model="m.gguf", backend="cuda", shape=Shape(), n_batch=512, threads=4,
                                 parts_for=lambda n_ctx, kv, n_seq: {**memory.gpu_plan_parts(device, host, True),
                                                                     "address_space": 0},
                                 kv_types=("f16",))
    orin_nano = memory.Budget(3 << 30, "MemAvailable", None)   # 8 GB board, desktop running
    with pytest.raises(MemoryBudgetError, match="MemAvailable"):
        memory.fit(request, orin_nano, n_ctx=2048)
    assert memory.fit(request, memory.Budget(6 << 30, "MemAvailable", None), n_ctx=2048).weights_owned == 3 << 30


def test_gpu_layers_offloads_the_last_layers_that_fit_and_the_head_only_after_all():
    mib = memory.MIB
    context = memory.CUDA_CONTEXT_DEVICE_BYTES
    layers = [100 * mib] * 10
    assert memory.gpu_layers(layers, 50 * mib, 10 * mib, context + 10 * mib + 550 * mib) == 5
    assert memory.gpu_layers(layers, 50 * mib, 10 * mib, context + 10 * mib + 1000 * mib) == 10
    assert memory.gpu_layers(layers, 50 * mib, 10 * mib, context + 10 * mib + 1050 * mib) == 11
    assert memory.gpu_layers(layers, 50 * mib, 10 * mib, context) == 0   # never "all" blindly


@pytest.mark.parametrize("integrated", [False, True])
def test_llamacpp_plan_moves_offloaded_layers_off_the_host_and_counts_weights_once(monkeypatch, smollm2_path,
                                                                                     integrated):
    from edgesdk import ggml_rpc, loading
    from edgesdk.backends.llamacpp import LlamaCppBackend
    if not LlamaCppBackend.available():
        pytest.fail(f"llama-cpp-python is part of the test environment: {LlamaCppBackend.available().reason}")
    cpu = loading.plan(smollm2_path, backend="llamacpp", n_ctx=512, threads=1)
    half = memory.CUDA_CONTEXT_DEVICE_BYTES + 64 * memory.MIB + cpu.weights_mapped // 2
    monkeypatch.setattr(ggml_rpc, "gpu_devices", lambda: [("CUDA0", half, 2 * half, integrated)])
    offloaded = loading.plan(smollm2_path, backend="llamacpp", n_ctx=512, threads=1)
    if integrated:   # every layer on the GPU, in the same RAM: the same bytes, once
        assert offloaded.weights_mapped + offloaded.weights_owned == cpu.weights_mapped
        assert offloaded.weights_owned > 0 and offloaded.kv_cache == cpu.kv_cache
    else:            # some layers, not all, with their KV cache, leave the host's plan
        assert 0 < offloaded.weights_mapped < cpu.weights_mapped and offloaded.weights_owned == 0
        assert offloaded.kv_cache < cpu.kv_cache
    # n_gpu_layers=0 keeps the model on the CPU whatever the GPU holds
    from edgesdk import LoadConfig
    kept = loading.prepare(smollm2_path, LoadConfig(backend="llamacpp", n_ctx=512, threads=1,
                                                    options={"n_gpu_layers": 0}))
    kept.close()
    assert kept.plan.weights_mapped == cpu.weights_mapped


# -- on a GPU ------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 8, 512])
@pytest.mark.parametrize("type_name", TYPES)
def test_gpu_products_match_the_cpu_engine(gpu, type_name, m, rng):
    from edgesdk import _cuda
    raw, n_rows, n_cols = _matrix(type_name, rng, n_rows=96 + 5)
    type_id = kernels.type_id(type_name)
    x = rng.normal(size=(m, n_cols)).astype(np.float32)
    w = kernels.dequantize(type_id, raw).reshape(n_rows, n_cols).astype(np.float64)
    cpu = kernels.matmul(kernels.Weight(type_id, n_rows, n_cols, raw), x)
    bound = matmul_error_bound(type_name, w, x)
    for path in ("dp4a", "mma"):
        y = _cuda.matmul(type_id, raw, n_rows, n_cols, x, path=path)
        if path == "dp4a":
            assert np.all(np.abs(y - x.astype(np.float64) @ w.T) <= bound), (type_name, m, path)
            assert np.all(np.abs(y - cpu) <= 2 * bound), (type_name, m, path)
        else:
            mma_bound = MMA_REL * 3 * (np.abs(x.astype(np.float64)) @ np.abs(w).T) + 1e-5
            assert np.all(np.abs(y - x.astype(np.float64) @ w.T) <= mma_bound), (type_name, m, path)


def _open(name, path, n_ctx=256):
    from edgesdk import loading
    from edgesdk.config import LoadConfig
    return loading.prepare(path, LoadConfig(backend=name, n_ctx=n_ctx, threads=1)).open()


def _prompt_ids(path, n: int) -> list:
    from edgesdk.tokenizer import Tokenizer
    from fidelity import PROSE, first_tokens
    return first_tokens(Tokenizer.from_gguf(path).encode, PROSE, n)


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_gpu_strays_from_the_truth_no_further_than_the_cpu_engine(gpu, model, request):
    from fidelity import fidelity, native_logits
    from test_fidelity import KL_TOLERANCE, TEACHER_FORCED_TOKENS, TOP1_TOLERANCE
    from truth_forward import TruthRows
    path = request.getfixturevalue(model)
    ids = _prompt_ids(path, TEACHER_FORCED_TOKENS)
    result = {}
    for name in ("native", "cuda"):
        with _open(name, path, n_ctx=TEACHER_FORCED_TOKENS) as backend:
            result[name] = fidelity(TruthRows(path, ids), native_logits(backend, ids))
    print(f"\n{Path(path).name}: truth vs cuda {result['cuda']}; truth vs native {result['native']}")
    assert result["cuda"].mean_kl <= result["native"].mean_kl + KL_TOLERANCE
    assert result["cuda"].top1 >= result["native"].top1 - TOP1_TOLERANCE


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_gpu_greedy_text_equals_the_cpu_engine_up_to_a_near_tie(gpu, model, request):
    path = request.getfixturevalue(model)
    ids = _prompt_ids(path, 64)
    engines = {name: _open(name, path) for name in ("native", "cuda")}
    try:
        logits = {name: e.eval(ids, 0) for name, e in engines.items()}
        for step in range(GREEDY_TOKENS):
            cpu, dev = logits["native"], logits["cuda"]
            top = np.argsort(cpu)[::-1]
            if int(np.argmax(dev)) != int(top[0]):
                # a near-tie: the GPU's choice is the CPU's runner-up, within NEAR_TIE of its best
                assert int(np.argmax(dev)) == int(top[1]) and cpu[top[0]] - cpu[top[1]] < NEAR_TIE, step
                break
            logits = {name: e.eval([int(top[0])], len(ids) + step) for name, e in engines.items()}
    finally:
        for e in engines.values():
            e.close()


def test_gpu_session_state_round_trips(gpu, smollm2_path):
    with _open("cuda", smollm2_path) as backend:
        ids = list(range(100, 140))
        assert np.isfinite(backend.eval(ids, 0)).all()
        blob = backend.save_state()
        continued = backend.eval([42], len(ids))
        backend.eval([5, 6, 7], 10)          # overwrite positions 10..12
        backend.load_state(blob, len(ids))
        assert np.array_equal(continued, backend.eval([42], len(ids)))


def test_gpu_prompt_in_one_pass_equals_token_by_token_within_the_path_change(gpu, smollm2_path):
    """m = 80 goes through MMA, m = 1 through DP4A: the same logits to the precision of either."""
    ids = _prompt_ids(smollm2_path, 80)
    with _open("cuda", smollm2_path) as backend:
        whole = backend.eval(ids, 0, all_logits=True)
        stepwise = np.stack([backend.eval([t], i) for i, t in enumerate(ids)])
    from fidelity import fidelity
    agreement = fidelity(stepwise.astype(np.float64), whole)
    assert agreement.mean_kl <= PATHS_MAX_KL and agreement.top1 >= PATHS_MIN_TOP1, agreement
