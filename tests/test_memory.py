"""edgesdk.memory: plans from the GGUF header, budgets, fit(), and plans against measured peak RSS."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import gguf as gguf_pkg
import numpy as np
import pytest

from edgesdk import loading, memory
from edgesdk.errors import InvalidArgumentError, MemoryBudgetError, ModelFormatError

MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "hw"
CHILD = Path(__file__).parent / "memory_child.py"

# The plan predicts the peak RSS of a whole-context run; the issue asks for +-10%.
PLAN_VS_RSS_TOLERANCE = 0.10

# Backends whose peak RSS is checked against the plan. "llamacpp-direct" drives llama.cpp's
# low-level API with the settings of edgesdk.backends.llamacpp (see tests/memory_child.py).
MEASURED_BACKENDS = ["llamacpp-direct", "native"]
# Away from the 512/2048/4096 runs the constants were measured at (384 also checks a batch
# smaller than 512), and small enough that filling the context stays cheap on a 2-core CI machine.
MEASURED_CONTEXTS = [384, 1024]
RLIMIT_CONTEXT = 256


# -- a synthetic model, header only ----------------------------------------------------

def write_header_only_model(path: Path, *, n_layer=4, n_embd=256, n_ff=768, n_head=8, n_head_kv=2,
                            n_vocab=1000, context_length=4096, pad_to: int = 0, arch="llama",
                            key_length=None) -> Path:
    """A llama-shaped GGUF whose tensor data is a hole: plan() must work from the header alone."""
    w = gguf_pkg.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_context_length(context_length)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    if key_length:
        w.add_key_length(key_length)
        w.add_value_length(key_length)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(n_vocab)])
    head_dim = key_length or n_embd // n_head
    q8 = gguf_pkg.GGMLQuantizationType.Q8_0
    shapes = {"token_embd.weight": (n_vocab, n_embd), "output_norm.weight": (n_embd,)}
    for i in range(n_layer):
        shapes.update({f"blk.{i}.attn_norm.weight": (n_embd,), f"blk.{i}.ffn_norm.weight": (n_embd,),
                       f"blk.{i}.attn_q.weight": (n_head * head_dim, n_embd),
                       f"blk.{i}.attn_k.weight": (n_head_kv * head_dim, n_embd),
                       f"blk.{i}.attn_v.weight": (n_head_kv * head_dim, n_embd),
                       f"blk.{i}.attn_output.weight": (n_embd, n_head * head_dim),
                       f"blk.{i}.ffn_gate.weight": (n_ff, n_embd), f"blk.{i}.ffn_up.weight": (n_ff, n_embd),
                       f"blk.{i}.ffn_down.weight": (n_embd, n_ff)})
    total = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape))
        if len(shape) == 1:
            w.add_tensor_info(name, shape, np.dtype(np.float32), n * 4)
            total += n * 4
        else:
            # With raw_dtype the writer takes the shape in bytes: rows of n_cols / 32 blocks of 34 bytes.
            w.add_tensor_info(name, (shape[0], shape[1] // 32 * 34), np.dtype(np.uint8), n // 32 * 34, raw_dtype=q8)
            total += n // 32 * 34
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    data_start = path.stat().st_size
    data_start = -(-data_start // 32) * 32
    with open(path, "r+b") as f:
        f.truncate(data_start + total + 32 * len(shapes) + pad_to)   # sparse: no bytes written
    return path


@pytest.fixture
def small_model(tmp_path):
    return write_header_only_model(tmp_path / "small.gguf")


def independent_tensor_bytes(path) -> int:
    reader = gguf_pkg.GGUFReader(str(path))
    return sum(int(t.n_bytes) for t in reader.tensors)


# -- the parts -------------------------------------------------------------------

def test_kv_cache_of_smollm2_is_layers_times_context_times_kv_heads_times_head_dim(smollm2_path):
    # 30 layers, 3 kv heads x 64 dims, K and V, 2 bytes (f16).
    p = loading.plan(smollm2_path, n_ctx=2048, kv_type="f16", backend="llamacpp", threads=2)
    assert p.kv_cache == 30 * 2048 * 3 * 64 * 2 * 2
    # q8_0: 32 values in 34 bytes.
    p8 = loading.plan(smollm2_path, n_ctx=2048, kv_type="q8_0", backend="llamacpp", threads=2)
    assert p8.kv_cache == 30 * 2048 * (3 * 64 // 32 * 34) * 2


def test_kv_cache_of_gemma3_uses_its_key_and_value_length(gemma3_path):
    # 18 layers, 1 kv head, key_length = value_length = 256 (not n_embd / n_head = 160).
    p = loading.plan(gemma3_path, n_ctx=1024, backend="llamacpp", threads=2)
    assert p.kv_cache == 18 * 1024 * 256 * 2 * 2


def test_weights_are_the_tensor_bytes_gguf_s_own_reader_counts(smollm2_path):
    # gguf's reader takes ~40 s over Gemma-3's 262k-token vocabulary; SmolLM2 (and the synthetic
    # models below) exercise the same sum.
    expected = independent_tensor_bytes(smollm2_path)
    assert loading.plan(smollm2_path, n_ctx=512, backend="llamacpp", threads=2).weights_mapped == expected
    # The native engine repacks SmolLM2's Q4_1/Q8_0 matrices into owned copies of the same size
    # (every row count is a multiple of 8) and releases their mapped pages.
    native = loading.plan(smollm2_path, n_ctx=512, backend="native", threads=2)
    assert native.weights_mapped + native.weights_owned == expected


def test_plan_defaults_to_the_model_s_context_length_and_f16(smollm2_path):
    p = loading.plan(smollm2_path, backend="llamacpp", threads=2)
    assert p.n_ctx == 8192 == p.context_length and p.kv_type == "f16"
    assert p.total == sum(p.parts().values())
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in p.summary() and "n_ctx=8192" in p.summary()


def test_plan_grows_with_context_and_batch(small_model):
    a = loading.plan(small_model, n_ctx=1024, backend="llamacpp", threads=2)
    b = loading.plan(small_model, n_ctx=2048, backend="llamacpp", threads=2)
    c = loading.plan(small_model, n_ctx=2048, backend="llamacpp", threads=2, n_batch=64)
    assert b.kv_cache == 2 * a.kv_cache and b.total > a.total
    assert c.scratch < b.scratch


def test_plan_reads_only_the_header_of_a_4_gib_sparse_model(tmp_path):
    path = write_header_only_model(tmp_path / "big.gguf", n_layer=32, n_embd=4096, n_ff=11008, n_head=32,
                                   n_head_kv=8, n_vocab=32000, pad_to=0)
    assert path.stat().st_size > 3 * 1024 * MIB
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    p = loading.plan(path, n_ctx=4096, backend="native", threads=2)
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    # Its Q8_0 matrices are planned as repacked copies (owned), the rest as mapped.
    tensor_bytes = independent_tensor_bytes(path)
    assert tensor_bytes <= p.weights_mapped + p.weights_owned < 1.01 * tensor_bytes
    assert p.kv_cache == 32 * 4096 * 8 * 128 * 2 * 2
    # Touching the 3+ GiB of (sparse) tensor data would show in the peak RSS. (No wall-clock
    # bound: this machine is shared, and timings belong in benchmarks.)
    assert rss_growth < 64 * MIB


def test_unknown_backend_kv_type_and_bad_sizes_are_rejected(small_model):
    with pytest.raises(InvalidArgumentError, match="unknown backend 'gpu'"):
        loading.plan(small_model, backend="gpu")
    with pytest.raises(InvalidArgumentError, match="kv_type 'int3'"):
        loading.plan(small_model, kv_type="int3")
    for bad in (0, -5, True, 2.5):
        with pytest.raises(InvalidArgumentError, match="n_ctx"):
            loading.plan(small_model, n_ctx=bad)


def test_a_model_without_its_hyperparameters_is_unsupported(tmp_path):
    w = gguf_pkg.GGUFWriter(str(tmp_path / "bare.gguf"), "llama")
    w.add_block_count(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(tmp_path / "bare.gguf", "ab") as f:
        f.write(bytes(64))   # up to the (empty) data section's alignment
    with pytest.raises(ModelFormatError, match="llama.embedding_length"):
        loading.plan(tmp_path / "bare.gguf")


@pytest.mark.parametrize("n_ctx,kv_type,n_batch,threads", [(512, "f16", 512, 1), (1536, "q8_0", 64, 2),
                                                          (4096, "f16", 128, 2)])
def test_native_engine_s_memory_requirements_match_the_header(smollm2_path, gemma3_path, small_model,
                                                               n_ctx, kv_type, n_batch, threads):
    from edgesdk import gguf
    from edgesdk.backends import native
    from edgesdk.shape import read_shape

    for path in (smollm2_path, gemma3_path, small_model):
        with gguf.open(path) as f:
            engine = native.memory_requirements(f, n_ctx, kv_type, n_batch, threads=threads)
            shape = read_shape(f)
            tensor_bytes = sum(t.nbytes for t in f.tensors.values())
        # layers x positions x (K + V) x kv heads x head dim, in whole blocks of the KV type
        block_values, block_bytes = {"f16": (1, 2), "q8_0": (32, 34)}[kv_type]
        row = shape.n_head_kv * shape.head_dim_k // block_values * block_bytes
        assert engine["kv_cache"] == shape.n_layer * n_ctx * 2 * row
        # Every tensor is either read from the mapping or held as an owned copy: repacked matrices
        # (rows padded to groups of 8) and norm vectors converted to f32, under 1% over the file's bytes.
        weights = engine["weights_mapped"] + engine["weights_owned"]
        assert tensor_bytes <= weights < 1.01 * tensor_bytes


# -- sizes -------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("1.5GB", 1_500_000_000), ("800MiB", 800 * MIB), ("512", 512), (" 2 gib ", 2 << 30), ("64k", 64_000),
    ("1TB", 10**12), (4096, 4096),
])
def test_sizes_parse_with_decimal_and_binary_units(text, expected):
    assert memory.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "GB", "-1GB", "1.5 GBs", "1,5GB", "nanGB", "1e9", "0.1B", 0, -1, True, 2.5,
                                 None, "1.5 XB"])
def test_bad_sizes_are_rejected(bad):
    with pytest.raises(InvalidArgumentError):
        memory.parse_size(bad)


# -- fit ---------------------------------------------------------------------------

def test_fit_with_room_gives_the_full_context(smollm2_path):
    p = loading.fit(smollm2_path, backend="llamacpp", max_memory="4GiB", threads=2)
    assert p.n_ctx == 8192 and p.budget == 4 << 30 and p.budget_source == "max_memory"


def test_fit_picks_the_largest_multiple_of_256_that_fits(small_model):
    def total(ctx):
        return loading.plan(small_model, n_ctx=ctx, backend="llamacpp", threads=2).total
    budget = (total(1792) + total(2048)) // 2          # 1792 fits, 2048 does not
    p = loading.fit(small_model, backend="llamacpp", max_memory=budget, threads=2)
    assert p.n_ctx == 1792 and p.n_ctx % 256 == 0
    assert p.total <= budget < total(p.n_ctx + 256)


def test_fit_refuses_with_the_numbers_and_the_ways_out(gemma3_path):
    with pytest.raises(MemoryBudgetError) as err:
        loading.fit(gemma3_path, n_ctx=32768, backend="llamacpp", max_memory="600MiB", threads=2)
    message = str(err.value)
    needed = loading.plan(gemma3_path, n_ctx=32768, backend="llamacpp", threads=2).total
    assert f"{needed / MIB:,.0f} MiB" in message and "600 MiB available" in message
    assert "max_memory" in message and "KV cache 576 MiB (f16)" in message
    assert "n_ctx=" in message and 'kv_type="q8_0"' in message
    # The way out it names really fits.
    ctx = int(message.split("a smaller context: n_ctx=")[1].split()[0])
    loading.fit(gemma3_path, n_ctx=ctx, backend="llamacpp", max_memory="600MiB", threads=2)


def test_fit_suggests_a_smaller_registry_model_when_no_context_fits(gemma3_path):
    with pytest.raises(MemoryBudgetError, match="smollm2-135m-instruct") as err:
        loading.fit(gemma3_path, backend="llamacpp", max_memory="200MiB", threads=2)
    assert "n_ctx=256" in str(err.value)        # it tried the smallest context


def test_fit_uses_the_cgroup_limit_of_the_device(tmp_path, gemma3_path):
    root = tmp_path / "rpi5"
    shutil.copytree(FIXTURES / "rpi5", root, symlinks=True)
    leaf = root / "sys/fs/cgroup/system.slice/edge-chat.service"
    (leaf / "memory.max").write_text(f"{700 * MIB}\n")
    (leaf / "memory.current").write_text(f"{40 * MIB}\n")
    (leaf / "memory.stat").write_text("inactive_file 0\n")
    p = loading.fit(gemma3_path, backend="llamacpp", threads=2, root=str(root))
    assert p.budget_source == "cgroup v2 memory.max" and p.budget == 660 * MIB
    assert 256 <= p.n_ctx < 32768 and p.n_ctx % 256 == 0
    assert p.total * (1 + memory.SAFETY_MARGIN_FRACTION) <= 660 * MIB
    (leaf / "memory.max").write_text(f"{300 * MIB}\n")
    with pytest.raises(MemoryBudgetError, match="cgroup v2 memory.max"):
        loading.fit(gemma3_path, backend="llamacpp", threads=2, root=str(root))


def test_fit_counts_an_address_space_limit(tmp_path, smollm2_path):
    root = tmp_path / "x86"
    shutil.copytree(FIXTURES / "x86-box", root, symlinks=True)
    limits = (root / "proc/self/limits").read_text()
    (root / "proc/self/limits").write_text(limits.replace("8589934592           8589934592",
                                                          f"{1024 * MIB + 450 * MIB:<20} {1024 * MIB + 450 * MIB:<20}"))
    # 1 GiB is mapped already (VmSize in the fixture's status): 450 MiB of address space is left.
    assert loading.plan(smollm2_path, n_ctx=8192, backend="llamacpp", threads=2).address_space > 450 * MIB
    with pytest.raises(MemoryBudgetError, match="(?s)address space.*RLIMIT_AS.*ulimit -v"):
        loading.fit(smollm2_path, n_ctx=8192, backend="llamacpp", threads=2, root=str(root))
    p = loading.fit(smollm2_path, backend="llamacpp", threads=2, root=str(root))
    assert 256 <= p.n_ctx < 8192 and p.address_space <= 450 * MIB


def test_an_address_space_limit_below_the_file_size_is_refused_before_mapping(tmp_path, smollm2_path):
    root = tmp_path / "x86"
    shutil.copytree(FIXTURES / "x86-box", root, symlinks=True)
    limit = 1024 * MIB + 50 * MIB          # 50 MiB above the fixture's VmSize; the file is 94 MiB
    limits = (root / "proc/self/limits").read_text()
    (root / "proc/self/limits").write_text(limits.replace("8589934592           8589934592",
                                                          f"{limit:<20} {limit:<20}"))
    with pytest.raises(MemoryBudgetError, match="(?s)mapping the file needs 94 MiB.*50 MiB available.*ulimit -v"):
        loading.fit(smollm2_path, backend="native", threads=2, root=str(root))


# -- against the real thing ------------------------------------------------------------

def run_child(*args, timeout=600) -> dict:
    proc = subprocess.run([sys.executable, str(CHILD), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    # A child the kernel or a crash killed has a negative return code and no JSON: that is the failure.
    assert proc.returncode == 0, f"child exited {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("backend", MEASURED_BACKENDS)
@pytest.mark.parametrize("n_ctx", MEASURED_CONTEXTS)
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_plan_total_is_within_10_percent_of_the_peak_rss_of_a_full_context_run(request, model, n_ctx, backend):
    path = request.getfixturevalue(model)
    result = run_child(backend, path, n_ctx)
    assert result["positions"] == n_ctx
    error = (result["planned"] - result["peak_rss"]) / result["peak_rss"]
    print(f"{os.path.basename(path)} {backend} n_ctx={n_ctx}: planned {result['planned'] / MIB:.1f} MiB, "
          f"measured {result['peak_rss'] / MIB:.1f} MiB, error {100 * error:+.1f}%")
    assert abs(error) <= PLAN_VS_RSS_TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("backend", MEASURED_BACKENDS)
@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_an_address_space_limit_below_the_plan_is_refused_and_one_at_the_plan_loads(request, model, backend):
    path = request.getfixturevalue(model)
    refused = run_child(backend, path, RLIMIT_CONTEXT, "--as-factor", 0.5)
    assert refused["refused"] is True
    assert "RLIMIT_AS" in refused["message"] and "Ways out" in refused["message"]
    loaded = run_child(backend, path, RLIMIT_CONTEXT, "--as-factor", 1.0)
    assert loaded["refused"] is False and loaded["positions"] == RLIMIT_CONTEXT
    assert loaded["vm_peak"] <= loaded["rlimit_as"]


# -- edgesdk info ------------------------------------------------------------------

def test_cli_info_prints_the_device_and_with_a_model_its_plan(capsys, smollm2_path):
    from edgesdk import cli

    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cores " in out and "budget " in out and "architecture" not in out
    assert cli.main(["info", str(smollm2_path), "--backend", "llamacpp", "--max-memory", "1GB"]) == 0
    out = capsys.readouterr().out
    assert "kv cache" in out and "total" in out and "n_ctx 8192" in out and "max_memory" in out


def test_cli_info_reports_a_model_that_does_not_fit_as_an_error(capsys, gemma3_path):
    from edgesdk import cli

    assert cli.main(["info", str(gemma3_path), "--max-memory", "100MB"]) == 2
    assert "does not fit" in capsys.readouterr().err
