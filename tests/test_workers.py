"""A model split over `edgesdk worker` processes on loopback (llama.cpp's RPC backend).

References: the same model in one llama.cpp process. Faults: a worker that is
down, on a wrong port, killed mid-generation, or refusing its share; after
each the host loads and generates again.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from unittest import mock

import numpy as np
import pytest

import edgesdk
from edgesdk import ggml_rpc, loading
from edgesdk.backends import llamacpp as llamacpp_backend
from edgesdk.backends.base import SeqInput
from edgesdk.batching import BatchScheduler
from edgesdk.backends.llamacpp import LlamaCppBackend
from edgesdk.config import LoadConfig
from edgesdk.errors import (InvalidArgumentError, MemoryBudgetError, WorkerLostError, WorkerMemoryError,
                            WorkerUnreachableError)

from workers_fixture import ROOT, Worker, free_port, start_workers

N_CTX = 256
PROMPT = "The three primary colours are red, blue and"
GREEDY_TOKENS = 12
# Teacher-forced logits of the split model against one process: llama.cpp computes each layer with
# the same CPU kernels wherever it lives, so they agree to the bit in practice; this bound is the
# float32 rounding of a logit of ~30 over a few re-associated sums, far below any real difference.
SPLIT_LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def rpc_backend_installed():
    ok, why = ggml_rpc.available()
    assert ok, why     # tools/test.sh installs llama.cpp with GGML_RPC: its absence is a setup failure


def _load(path, workers=(), **settings):
    return edgesdk.load(str(path), backend="llamacpp", n_ctx=N_CTX, threads=1, workers=list(workers), **settings)


def _load_plain(path, **settings):
    """One process on llama.cpp's plain CPU path, the computation a split model runs: the workers'
    ggml CPU devices hold plain weights (runtime repacking is a host CPU buffer type), so a
    one-process reference with repacked Q4_0 would differ by its other summation order."""
    with mock.patch.object(llamacpp_backend, "extra_buffer_types_work", lambda system_info: False):
        return _load(path, **settings)


def _greedy(model, ids, n):
    return model.generate(ids, max_tokens=n, temperature=0, repeat_penalty=1.0)


def _assert_loads_and_answers(path, workers, ids, n):
    """A fresh load (on `workers`, or on its own) answers n greedy tokens: the host is still usable."""
    model = _load(path, workers)
    try:
        assert _greedy(model, ids, n)
    finally:
        model.close()


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_path):
    """Single-process llama.cpp: teacher-forced logits twice (its run-to-run spread) and greedy text."""
    model = _load_plain(smollm2_path)
    try:
        ids = model.tokenize(PROMPT)
        first, second = model.score(ids), model.score(ids)
        return ids, first, float(np.abs(first - second).max()), _greedy(model, ids, GREEDY_TOKENS)
    finally:
        model.close()


@pytest.mark.slow
@pytest.mark.parametrize("n_workers", [2, 3])
def test_split_smollm2_matches_one_process(smollm2_path, smollm2_reference, n_workers):
    ids, reference, run_to_run, reference_text = smollm2_reference
    workers = start_workers(n_workers)
    try:
        model = _load(smollm2_path, [w.endpoint for w in workers])
        try:
            held = [n for _, n in model.backend.layers]
            assert len(held) == n_workers and sum(held) == 30 and min(held) > 0
            logits = model.score(ids)
            assert logits.shape == reference.shape
            assert float(np.abs(logits - reference).max()) <= max(SPLIT_LOGITS_ATOL, run_to_run)
            assert _greedy(model, ids, GREEDY_TOKENS) == reference_text
        finally:
            model.close()
    finally:
        for w in workers:
            w.stop()


@pytest.fixture(scope="module")
def llama_1b_path():
    """benchmarks/vs_llamacpp.py's 1B random llama (written once under $EDGESDK_HOME/bench)."""
    spec = importlib.util.spec_from_file_location("vs_llamacpp", ROOT / "benchmarks" / "vs_llamacpp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.llama_1b_path()


def _two_sequence_steps(backend, first, second):
    """Both prompts in one step, a decode step of both, then the second's prefix copied into the first."""
    rows = backend.eval_batch([SeqInput(0, first, 0), SeqInput(1, second, 0)])
    nxt = [int(np.argmax(r)) for r in rows]
    rows += backend.eval_batch([SeqInput(0, [nxt[0]], len(first)), SeqInput(1, [nxt[1]], len(second))])
    held = [backend.seq_n_past(0), backend.seq_n_past(1)]
    backend.copy_seq(1, 0, 3)
    rows += backend.eval_batch([SeqInput(0, second[3:], 3)])
    return np.stack(rows), held + [backend.seq_n_past(0)]


@pytest.mark.slow
def test_split_model_holds_several_sequences_like_one_process(smollm2_path):
    """n_seq > 1 over workers: llama.cpp's own sequences in the child, the same steps as in one process."""
    plain = _load_plain(smollm2_path, n_seq=2)
    try:
        first, second = plain.tokenize(PROMPT), plain.tokenize("Once upon a time, in a small town,")
        reference, reference_held = _two_sequence_steps(plain.backend, first, second)
    finally:
        plain.close()
    workers = start_workers(2)
    try:
        model = _load(smollm2_path, [w.endpoint for w in workers], n_seq=2)
        try:
            assert model.backend.n_seq == 2
            rows, held = _two_sequence_steps(model.backend, first, second)
            assert held == reference_held == [len(first) + 1, len(second) + 1, len(second)]
            print(f"split vs one process, two sequences: max |logit difference| {np.abs(rows - reference).max():.2e}")
            assert float(np.abs(rows - reference).max()) <= SPLIT_LOGITS_ATOL
            with pytest.raises(InvalidArgumentError):
                model.backend.eval_batch([SeqInput(2, first, 0)])       # checked on the host: the child lives
            assert model.backend.seq_n_past(1) == len(second) + 1
            # A server's scheduler over it: two requests at once answer as each alone.
            alone = [_greedy(model, ids, GREEDY_TOKENS) for ids in (first, second)]
            config = model.generation.with_options(max_tokens=GREEDY_TOKENS, temperature=0, repeat_penalty=1.0)
            with BatchScheduler(model) as scheduler:
                together = [scheduler.submit(ids, config) for ids in (first, second)]
                assert [g.text() for g in together] == alone
        finally:
            model.close()
    finally:
        for w in workers:
            w.stop()


@pytest.mark.slow
def test_split_1b_over_three_workers_matches_one_process(llama_1b_path):
    rng = np.random.default_rng(7)
    ids = [1] + rng.integers(3, 32000, size=7).tolist()
    reference_model = _load_plain(llama_1b_path)
    try:
        reference = reference_model.score(ids)
        run_to_run = float(np.abs(reference - reference_model.score(ids)).max())
        reference_next = _greedy(reference_model, ids, 3)
    finally:
        reference_model.close()
    workers = start_workers(3)
    try:
        model = _load(llama_1b_path, [w.endpoint for w in workers])
        try:
            assert sum(n for _, n in model.backend.layers) == 22
            assert float(np.abs(model.score(ids) - reference).max()) <= max(SPLIT_LOGITS_ATOL, run_to_run)
            assert _greedy(model, ids, 3) == reference_next
        finally:
            model.close()
    finally:
        for w in workers:
            w.stop()


def _plan(path, endpoints, **settings):
    prepared = loading.prepare(str(path), LoadConfig(backend="llamacpp", n_ctx=N_CTX, threads=1,
                                                     workers=tuple(endpoints), **settings))
    prepared.close()
    return prepared.split


@pytest.mark.slow
def test_split_follows_each_workers_mem_limit(smollm2_path):
    with Worker(mem="60MiB") as small, Worker(mem="240MiB") as large:
        split = _plan(smollm2_path, [small.endpoint, large.endpoint])
        first, second = split.shares
        assert (first.free, second.free) == (60 << 20, 240 << 20)
        assert first.n_layers + second.n_layers == 30 and 0 < first.n_layers < second.n_layers
        for share in split.shares:
            assert share.bytes <= share.free
        assert second.holds_output and not first.holds_output
        # The worker counts what a host holds and gives it back when the host goes.
        model = _load(smollm2_path, [small.endpoint, large.endpoint])
        try:
            assert _greedy(model, model.tokenize(PROMPT), 2)
        finally:
            model.close()
        assert LlamaCppBackend.probe_workers([small.endpoint])[0][1] == 60 << 20


@pytest.mark.slow
def test_a_worker_given_no_layers_is_not_held(smollm2_path, monkeypatch):
    """A worker serves one host at a time: one the split leaves empty stays free for another host."""
    from edgesdk.backends import _rpc_host

    with Worker(mem="20MiB") as idle, Worker() as roomy:
        assert [s.n_layers for s in _plan(smollm2_path, [idle.endpoint, roomy.endpoint]).shares] == [0, 30]
        model = _load(smollm2_path, [idle.endpoint, roomy.endpoint])
        try:
            device = model.backend.info().device
            assert idle.endpoint not in device and roomy.endpoint in device
            assert _greedy(model, model.tokenize(PROMPT), 2)
            monkeypatch.setattr(_rpc_host, "PROBE_TIMEOUT_S", 8.0)
            assert LlamaCppBackend.probe_workers([idle.endpoint])[0][1] == 20 << 20     # not busy with us
        finally:
            model.close()


@pytest.mark.slow
def test_workers_too_small_together_are_refused_with_numbers(smollm2_path):
    with Worker(mem="40MiB") as a, Worker(mem="40MiB") as b:
        with pytest.raises(MemoryBudgetError) as info:
            _plan(smollm2_path, [a.endpoint, b.endpoint])
    message = str(info.value)
    assert "does not fit its workers" in message and a.endpoint in message and b.endpoint in message
    assert "40 MiB" in message


@pytest.mark.slow
def test_info_prints_the_split(smollm2_path):
    with Worker(mem="100MiB") as a, Worker(mem="200MiB") as b:
        out = subprocess.run([sys.executable, "-m", "edgesdk.cli", "info", str(smollm2_path), "--backend", "llamacpp",
                              "--n-ctx", str(N_CTX), "--workers", f"{a.endpoint},{b.endpoint}"],
                             capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [line for line in out.stdout.splitlines() if a.endpoint in line or b.endpoint in line]
    assert len(rows) == 2 and "layers" in rows[0] and "+ output" in rows[1]


@pytest.mark.slow
def test_nothing_listening_is_named_and_the_host_stays_usable(smollm2_path):
    endpoint = f"127.0.0.1:{free_port()}"
    with pytest.raises(WorkerUnreachableError) as info:
        _load(smollm2_path, [endpoint])
    assert info.value.endpoint == endpoint and endpoint in str(info.value)
    model = _load(smollm2_path)
    try:
        assert _greedy(model, model.tokenize(PROMPT), 2)
    finally:
        model.close()


@pytest.mark.slow
def test_a_port_that_is_not_a_worker_is_named(smollm2_path):
    """Something else listens there: ggml's client aborts on the failed handshake, in the child only."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    endpoint = f"127.0.0.1:{server.getsockname()[1]}"

    def answer_garbage():
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            conn.close()

    thread = threading.Thread(target=answer_garbage, daemon=True)
    thread.start()
    try:
        with pytest.raises(WorkerUnreachableError) as info:
            _load(smollm2_path, [endpoint])
    finally:
        server.close()
    assert info.value.endpoint == endpoint and "protocol" in str(info.value)


@pytest.mark.slow
def test_a_worker_killed_mid_generation_is_named_and_the_host_stays_usable(smollm2_path):
    survivor, victim = start_workers(2)
    try:
        model = _load(smollm2_path, [survivor.endpoint, victim.endpoint])
        ids = model.tokenize(PROMPT)
        pieces = model.generate(ids, stream=True, max_tokens=40, temperature=0, repeat_penalty=1.0)
        next(pieces)
        victim.kill()
        with pytest.raises(WorkerLostError) as info:
            for _ in pieces:
                pass
        assert info.value.endpoint == victim.endpoint and victim.endpoint in str(info.value)
        with pytest.raises(WorkerLostError):
            model.score(ids)      # the split model stays closed, with the same kind of error
        model.close()
        # The host loads again: on the surviving worker, and on its own.
        _assert_loads_and_answers(smollm2_path, [survivor.endpoint], ids, 3)
        _assert_loads_and_answers(smollm2_path, [], ids, 3)
    finally:
        survivor.stop()
        victim.stop()


@pytest.mark.slow
def test_a_frozen_worker_is_named_within_the_stall_timeout_and_the_host_stays_usable(smollm2_path, monkeypatch):
    """A stopped worker process still accepts connections and never answers: llama.cpp's client would
    wait for ever; the host gives up after the stall timeout instead of hanging."""
    from edgesdk.backends import _rpc_host

    with Worker() as frozen:
        model = _load(smollm2_path, [frozen.endpoint])
        ids = model.tokenize(PROMPT)
        assert _greedy(model, ids, 2)
        monkeypatch.setattr(_rpc_host, "STALL_TIMEOUT_S", 4.0)
        os.kill(frozen.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(WorkerLostError, match="frozen"):
                model.score(ids)
            assert time.monotonic() - started < 4.0 * 3       # one eval of a short prompt: one decode's deadline
            with pytest.raises(WorkerLostError):
                model.score(ids)                                # closed, with the same kind of error
        finally:
            os.kill(frozen.process.pid, signal.SIGCONT)
        model.close()
    _assert_loads_and_answers(smollm2_path, [], ids, 2)


@pytest.mark.slow
def test_a_worker_refuses_a_share_above_its_limit(smollm2_path, monkeypatch):
    """The host is told 1 GiB (a stale or wrong report); the worker's allocator holds to its --mem."""
    with Worker(mem="50MiB") as tight, Worker() as roomy:
        real = LlamaCppBackend.probe_workers

        def overstated(endpoints):
            return [(e, 1 << 30, 1 << 30) if e == tight.endpoint else (e, free, total)
                    for e, free, total in real(endpoints)]

        monkeypatch.setattr(LlamaCppBackend, "probe_workers", classmethod(lambda cls, e: overstated(e)))
        with pytest.raises(WorkerMemoryError) as info:
            _load(smollm2_path, [roomy.endpoint, tight.endpoint])
        assert info.value.endpoint == tight.endpoint and tight.endpoint in str(info.value)
        monkeypatch.undo()
        # Its memory is whole again for the next host, and a plan within it loads.
        assert LlamaCppBackend.probe_workers([tight.endpoint])[0][1] == 50 << 20
        model = _load(smollm2_path, [tight.endpoint, roomy.endpoint])
        try:
            assert _greedy(model, model.tokenize(PROMPT), 2)
        finally:
            model.close()


def test_worker_refuses_a_non_loopback_address_without_the_flag():
    out = subprocess.run([sys.executable, "-m", "edgesdk.cli", "worker", "--host", "0.0.0.0", "--port",
                          str(free_port())], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert out.returncode == 2 and "--allow-remote" in out.stderr and "authentication" in out.stderr


@pytest.mark.slow
def test_worker_warns_when_told_to_listen_beyond_loopback():
    with Worker(extra=["--host", "0.0.0.0", "--allow-remote"]) as w:
        w.kill()
        err = w.process.stderr.read().decode()
    assert "WARNING" in err and "no authentication" in err


def test_workers_are_refused_by_a_backend_that_cannot_use_them(smollm2_path):
    with pytest.raises(InvalidArgumentError, match="cannot use workers"):
        edgesdk.load(str(smollm2_path), backend="native", workers=["127.0.0.1:50052"])


@pytest.mark.parametrize("bad", ["localhost", "host:0", "host:70000", "a:b:1", "::1:50052", ""])
def test_a_malformed_worker_endpoint_is_refused(bad):
    with pytest.raises(InvalidArgumentError):
        LoadConfig(workers=(bad,))


@pytest.mark.slow
def test_a_worker_busy_with_another_host_is_named(smollm2_path, monkeypatch):
    """llama.cpp's RPC server serves one host at a time: a second host's probe waits, then gives up."""
    from edgesdk.backends import _rpc_host

    with Worker() as w:
        first = _load(smollm2_path, [w.endpoint])
        try:
            monkeypatch.setattr(_rpc_host, "PROBE_TIMEOUT_S", 8.0)
            with pytest.raises(WorkerUnreachableError) as info:
                _plan(smollm2_path, [w.endpoint])
            assert info.value.endpoint == w.endpoint and "another host" in str(info.value)
            assert _greedy(first, first.tokenize(PROMPT), 2)     # the first host is not disturbed
        finally:
            first.close()

