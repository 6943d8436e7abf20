"""The wheels tools/build_wheels.py makes, installed the way users install them.

- Both wheels: tagged py3-none-manylinux_2_N_<arch> with N no newer than the oldest glibc they must
  install on (JetPack 6 / Ubuntu 22.04: 2.35; Raspberry Pi OS bookworm: 2.36), checked against the
  glibc symbol versions the library really needs (readelf, independently of auditwheel), linking
  nothing but libc and libm, with no Python C API symbol (which py3-none promises) and no rpath.
- x86_64: into a clean venv with no C compiler reachable, then the quickstart offline.
- aarch64: into Debian bookworm arm64 under qemu user-mode emulation (tools/arm_env.sh), run as a
  Raspberry Pi 4 core (cortex-a72: NEON, no dot product) and as qemu's `max` CPU (dot product):
  `edgesdk info` names the kernel ISA, tokenizer ids equal x86's, SmolLM2 loads through the memory
  planner and greedy text equals x86's scalar path up to a near-tie, and a chat session saved on
  x86 loads there.

Emulation says nothing about speed: the timings printed are a sanity check only.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgesdk import _native
from tokenizer_corpus import build_corpus

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
VERSION = "0.1.0"


def _build_wheels_module():
    spec = importlib.util.spec_from_file_location("build_wheels", REPO_ROOT / "tools" / "build_wheels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The oldest glibc among the systems each wheel must install on, as tools/build_wheels.py lists them.
OLDEST_GLIBC = {arch: min(spec["must_install_on"].values()) for arch, spec in _build_wheels_module().ARCHES.items()}
ELF_MACHINE = {"x86_64": "Advanced Micro Devices X86-64", "aarch64": "AArch64"}
ALLOWED_NEEDED = {"libc.so.6", "libm.so.6"}
# qemu CPU model -> the kernel family dispatch must choose on it.
ARM_CPUS = {"cortex-a72": "neon", "max": "neon_dotprod"}

BUILD_TIMEOUT_S = 1800       # two clean native builds on 2 busy cores: ~2 min each
ARM_ENV_TIMEOUT_S = 1200     # the first time: debootstrap download + unpack, ~3 min
PIP_TIMEOUT_S = 900          # pip under emulation: ~20 s a call, minutes when it fetches numpy the first time
GUEST_TIMEOUT_S = 900        # one guest run (tokenizer corpus, 25 tokens, a session turn)
RUN_TIMEOUT_S = 300

N_CTX = 256
THREADS = 2
GREEDY_TOKENS = 24
PROMPT = "The capital of France is"
# Greedy, on the raw logits: the x86 scalar path and the guest pick the same way.
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0}
# A near-tie: the first token where the two greedy texts part, the x86 scalar path's logit for its
# own pick exceeds its logit for the aarch64 pick by less than this. The same bar as the x86 ISA
# paths against scalar (tests/test_engine_parity.py, ISA_TIE_MARGIN: below llama.cpp's own rounding
# noise on these 4-bit models, whose matmuls re-quantize activations to 8 bits). After that token
# the texts continue from different prefixes and are not compared.
NEAR_TIE_MARGIN = 1.0
# Encode modes the corpus is compared in: (add_special, parse_special).
TOKENIZER_MODES = [(True, False), (False, True)]


def _run(cmd, timeout, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} exited {out.returncode}:\n{(out.stdout + out.stderr)[-6000:]}"
    return out


def _edgesdk_home() -> Path:
    from edgesdk import registry
    return registry.home()


def install_wheel(python: list, wheel: Path, wheelhouse: Path, env=None) -> None:
    """pip installs the wheel and its dependencies from a cache of wheels only (offline); the first
    time, pip fills that cache from the package index. Binary wheels only: nothing compiles."""
    pip = python + ["-m", "pip", "--disable-pip-version-check", "-q"]
    offline = pip + ["install", "--only-binary=:all:", "--no-index", "--find-links", wheelhouse, wheel]
    if subprocess.run([str(c) for c in offline], capture_output=True, timeout=PIP_TIMEOUT_S, env=env).returncode:
        _run(pip + ["download", "--only-binary=:all:", "--dest", wheelhouse, wheel], PIP_TIMEOUT_S, env=env)
        _run(offline, PIP_TIMEOUT_S, env=env)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    built = _run([sys.executable, REPO_ROOT / "tools" / "build_wheels.py", "--out", out], BUILD_TIMEOUT_S)
    return {arch: Path(path) for arch, path in json.loads(built.stdout).items()}


# -- the wheels themselves --------------------------------------------------------------------

def _readelf(*args) -> str:
    return _run(["readelf", "-W", *args], RUN_TIMEOUT_S, env=dict(os.environ, LC_ALL="C")).stdout


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(OLDEST_GLIBC))
def test_wheel_tag_matches_what_its_library_needs(wheels, arch, tmp_path):
    wheel = wheels[arch]
    tag = re.fullmatch(rf"edgesdk-{re.escape(VERSION)}-py3-none-manylinux_(\d+)_(\d+)_{arch}\.whl", wheel.name)
    assert tag, wheel.name
    claimed = (int(tag.group(1)), int(tag.group(2)))
    assert claimed <= OLDEST_GLIBC[arch], f"{wheel.name} would not install on glibc {OLDEST_GLIBC[arch]}"
    with zipfile.ZipFile(wheel) as zf:
        shared = [n for n in zf.namelist() if ".so" in n]
        assert shared == ["edgesdk/libedgekern.so"], shared
        metadata = zf.read(f"edgesdk-{VERSION}.dist-info/WHEEL").decode()
        library = tmp_path / "libedgekern.so"
        library.write_bytes(zf.read(shared[0]))
    assert f"Tag: py3-none-manylinux_{claimed[0]}_{claimed[1]}_{arch}" in metadata
    assert "Root-Is-Purelib: false" in metadata
    assert f"Machine:                           {ELF_MACHINE[arch]}" in _readelf("-h", library)
    dynamic = _readelf("-d", library)
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic))
    assert needed <= ALLOWED_NEEDED, needed
    assert "RPATH" not in dynamic and "RUNPATH" not in dynamic
    symbols = _readelf("--dyn-syms", library)
    versions = {tuple(map(int, v.split("."))) for v in re.findall(r"@GLIBC_(\d+\.\d+(?:\.\d+)?)", symbols)}
    assert versions and max(versions)[:2] <= claimed, (sorted(versions), claimed)
    undefined = re.findall(r"\sUND\s+(\S+)", symbols)
    assert not [s for s in undefined if s.startswith(("Py", "_Py"))], "the library uses the Python C API"
    assert "ek_abi_version" in symbols
    print(f"{wheel.name}: needs glibc {'.'.join(map(str, max(versions)))}, links {sorted(needed)}")


# -- x86_64: a clean venv, no compiler, the quickstart offline ------------------------------------

# Loaded first by every Python in the clean venv: any connection other than a local socket fails,
# so "offline" is checked, not assumed.
NO_NETWORK = '''
import socket
_connect = socket.socket.connect
def _local_only(self, address):
    if self.family != socket.AF_UNIX:
        raise OSError(f"network access during the offline quickstart: {address!r}")
    return _connect(self, address)
socket.socket.connect = _local_only
'''


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the x86_64 wheel installs on x86_64 only")
def test_x86_64_wheel_installs_without_a_compiler_and_runs_the_quickstart_offline(wheels, smollm2_path, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], RUN_TIMEOUT_S)
    # Only the venv on PATH: no cc, gcc or make can be found, and CC points nowhere.
    env = {"PATH": str(venv / "bin"), "HOME": os.environ["HOME"], "CC": "/nonexistent/cc",
           "EDGESDK_HOME": str(_edgesdk_home()), "LC_ALL": "C.UTF-8"}
    for compiler in ("cc", "gcc", "clang", "make"):
        assert shutil.which(compiler, path=env["PATH"]) is None
    install_wheel([venv / "bin" / "python"], wheels["x86_64"], _edgesdk_home() / "wheelhouse" / "x86_64", env=env)
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    env["PYTHONPATH"] = str(guard)
    where = _run([venv / "bin" / "python", "-c", "import edgesdk._native as n; print(n._library_path())"],
                 RUN_TIMEOUT_S, env=env, cwd=tmp_path).stdout.strip()
    assert where.startswith(str(venv)), where
    answer = _run([venv / "bin" / "edgesdk", "run", "smollm2-135m-instruct", "Name one primary colour.",
                   "--max-tokens", "8", "--temperature", "0"], RUN_TIMEOUT_S, env=env, cwd=tmp_path)
    assert answer.stdout.strip(), answer.stderr


# -- aarch64 under emulation ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def arm_env(wheels):
    """The cached Debian arm64 environment with this run's aarch64 wheel installed."""
    assert shutil.which("qemu-aarch64"), "qemu-aarch64 is missing: tools/test.sh installs qemu-user"
    directory = Path(_run(["bash", REPO_ROOT / "tools" / "arm_env.sh"], ARM_ENV_TIMEOUT_S).stdout.strip().splitlines()[-1])
    guest = ["qemu-aarch64", "-L", directory / "rootfs", directory / "venv" / "bin" / "python"]
    _run(guest + ["-m", "pip", "uninstall", "-q", "-y", "edgesdk"], PIP_TIMEOUT_S)
    install_wheel(guest, wheels["aarch64"], _edgesdk_home() / "wheelhouse" / "aarch64-cp311")
    return directory


def guest_python(env_dir: Path, cpu: str) -> list:
    return ["qemu-aarch64", "-L", env_dir / "rootfs", "-cpu", cpu, env_dir / "venv" / "bin" / "python", "-I"]


def _specials(tokenizer) -> list:
    """The model's first special-token strings and a spread of the rest (as test_tokenizer_llamacpp)."""
    specials = [tokenizer.token_text(i) for i in range(tokenizer.n_vocab) if tokenizer.is_control(i)]
    return specials[:24] + specials[24::max(1, len(specials) // 16)]


@pytest.fixture(scope="module")
def x86_side(smollm2_path, gemma3_path, tmp_path_factory):
    """What the guest gets to do and what x86 got doing it: tokenizer ids, the scalar path's greedy
    text and its logits along it, and a two-turn chat session saved here."""
    import edgesdk
    from edgesdk import gguf
    from edgesdk.tokenizer import Tokenizer

    work = tmp_path_factory.mktemp("arm-task")
    load = {"backend": "native", "n_ctx": N_CTX, "threads": THREADS}
    task = {"tokenizer": {}, "generate": {}, "session": {}}
    expected = {"tokenizer": {}}
    for name, path in (("smollm2", smollm2_path), ("gemma3", gemma3_path)):
        with gguf.open(path) as file:
            tokenizer = Tokenizer.from_gguf(file)
        corpus = build_corpus(_specials(tokenizer))
        task["tokenizer"][name] = {"model": str(path), "corpus": corpus, "modes": TOKENIZER_MODES}
        expected["tokenizer"][name] = [[tokenizer.encode(t, add_special=a, parse_special=p) for a, p in TOKENIZER_MODES]
                                       for t in corpus]

    options = dict(GREEDY, max_tokens=GREEDY_TOKENS + 1)   # the last token of 24 is evaluated too
    task["generate"] = {"model": str(smollm2_path), "load": load, "prompt": PROMPT, "options": options}
    before = _native.isa_current()
    _native.isa_set("scalar")
    try:
        with edgesdk.load(smollm2_path, **load) as model:
            text = model.generate(PROMPT, **options)
            assert model.last_stats.finish_reason == "length", "the prompt must give 25 tokens, not stop early"
            prompt_ids = model.tokenize(PROMPT)
            expected["generate"] = {"text": text, "prompt_ids": prompt_ids, "cached_ids": model.cached_ids,
                                    "score": model.score}
            # The session, two turns (on the scalar path too: a saved KV cache does not depend on it).
            session = edgesdk.ChatSession(model, system="You answer in one short sentence.", max_tokens=6, **GREEDY)
            session.send("Name a fruit.")
            session.send("And a vegetable?")
            session_path = work / "session.edgesdk"
            session.save(session_path)
            next_turn = "And a colour?"
            expected["session"] = {"history": session.history, "cached_ids": model.cached_ids}
            # The same resumption here: how much of the restored cache the next turn reuses.
            model.reset()
            resumed = edgesdk.ChatSession.load(session_path, model)
            resumed.send(next_turn)
            expected["session"]["reused_tokens"] = model.last_stats.reused_tokens
            task["session"] = {"path": str(session_path), "next_turn": next_turn}
            task_path = work / "task.json"
            task_path.write_text(json.dumps(task))
            # score() needs the model open and scalar active: the near-tie check runs within this fixture.
            yield task_path, expected
    finally:
        _native.isa_set(before)


@pytest.fixture(scope="module", params=sorted(ARM_CPUS))
def arm_run(request, arm_env, x86_side, tmp_path_factory):
    cpu = request.param
    task_path, _ = x86_side
    result_path = tmp_path_factory.mktemp(f"arm-{cpu}") / "result.json"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # cwd: not the checkout, so nothing of it can be imported instead of the wheel.
    _run(guest_python(arm_env, cpu) + [TESTS / "arm_guest.py", task_path, result_path], GUEST_TIMEOUT_S,
         cwd=result_path.parent)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    result = json.loads(result_path.read_text())
    print(f"\naarch64 under qemu -cpu {cpu} (emulated: a sanity check, says nothing of a Pi's speed): "
          f"wall s {result['seconds']}, {cpu_s:.0f} CPU s in all")
    return cpu, result


@pytest.mark.slow
@pytest.mark.parametrize("cpu", sorted(ARM_CPUS))
def test_edgesdk_info_names_the_kernel_isa_under_emulation(arm_env, cpu):
    """The installed console script, as a user runs it: `edgesdk info --json`."""
    out = _run(guest_python(arm_env, cpu) + [arm_env / "venv" / "bin" / "edgesdk", "info", "--json"], RUN_TIMEOUT_S,
               cwd=arm_env)
    native = json.loads(out.stdout)["native"]
    assert native["isa_current"] == ARM_CPUS[cpu], native
    has_dotprod = cpu != "cortex-a72"
    assert ("dotprod" in native["cpu_features"]) == has_dotprod, native
    assert ("neon_dotprod" in native["isa_available"]) == has_dotprod, native
    assert "neon" in native["isa_available"] and "avx2" not in native["isa_available"]


@pytest.mark.slow
def test_the_wheel_is_what_runs_in_the_guest(arm_run, arm_env):
    cpu, result = arm_run
    assert result["machine"] == "aarch64"
    assert result["edgesdk_file"].startswith(str(arm_env / "venv")), result["edgesdk_file"]
    assert result["isa"] == ARM_CPUS[cpu]


@pytest.mark.slow
def test_tokenizer_ids_equal_x86s_on_the_corpus(arm_run, x86_side):
    cpu, result = arm_run
    expected = x86_side[1]["tokenizer"]
    for name, job in json.loads(x86_side[0].read_text())["tokenizer"].items():
        got = result["tokenizer"][name]
        assert len(got) == len(expected[name]) >= 2000
        differing = [text for text, a, b in zip(job["corpus"], got, expected[name]) if a != b]
        assert not differing, f"{name} on {cpu}: {len(differing)} strings tokenize differently, e.g. {differing[:3]!r}"


@pytest.mark.slow
def test_greedy_text_equals_the_x86_scalar_path_up_to_a_near_tie(arm_run, x86_side):
    cpu, result = arm_run
    expected = x86_side[1]["generate"]
    got = result["generate"]
    plan = got["plan"]
    assert plan["n_ctx"] == N_CTX and plan["backend"] == "native" and plan["weights_mapped"] + plan["weights_owned"] > 0
    assert got["prompt_ids"] == expected["prompt_ids"]
    n_prompt = len(expected["prompt_ids"])
    ours = expected["cached_ids"][n_prompt:]
    theirs = got["cached_ids"][n_prompt:]
    assert len(ours) == GREEDY_TOKENS and got["finish_reason"] == "length"
    if theirs == ours:
        assert got["text"] == expected["text"]
        print(f"{cpu}: {GREEDY_TOKENS} greedy tokens equal the x86 scalar path's: {got['text']!r}")
        return
    first = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
    logits = expected["score"](expected["prompt_ids"] + ours[:first])[-1]
    margin = float(logits[ours[first]] - logits[theirs[first]])
    print(f"{cpu}: token {first} differs ({ours[first]} vs {theirs[first]}), x86 scalar margin {margin:.4f}")
    assert margin < NEAR_TIE_MARGIN, (
        f"{cpu}: greedy token {first} is {theirs[first]}, the x86 scalar path's {ours[first]} leads it by {margin:.3f}")


@pytest.mark.slow
def test_a_chat_session_saved_on_x86_loads_and_continues(arm_run, x86_side):
    """The session format keys a saved KV cache on the GGUF header, backend, n_ctx and KV type (chat.py,
    Model.identity), not on the CPU, and stores plain little-endian KV rows: so it promises that a
    session saved on x86 resumes on aarch64 with the same settings."""
    cpu, result = arm_run
    expected = x86_side[1]["session"]
    got = result["session"]
    assert got["history"] == expected["history"] and len(got["history"]) == 4
    assert got["cached_ids"] == expected["cached_ids"] and got["cached_ids"]
    # The next turn reused the restored cache as much as it does on x86: only the new message was evaluated.
    assert got["reused_tokens"] == expected["reused_tokens"] > 0, (got["reused_tokens"], expected["reused_tokens"])
    assert got["completion_tokens"] >= 1 and got["answer"].strip()
