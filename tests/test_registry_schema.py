"""The registry file is checked as a whole when it is read: one RegistryError naming the entry and field,
before anything is downloaded or looked up."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgesdk import registry
from edgesdk.errors import RegistryError

REPO_ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"GGUF" + bytes(range(256)) * 4

VALID = {
    "schema": 1,
    "default": "tiny",
    "models": {
        "tiny": {
            "description": "test model", "architecture": "llama", "parameters": 1000, "quantization": "F32",
            "file": "tiny.gguf", "size": len(PAYLOAD), "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
            "license": "test", "chat": True, "generation": {"temperature": 0.2, "top_p": 0.9},
            "source": {"kind": "pypi", "packages": [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}]},
        },
        "base": {
            "description": "a base model", "architecture": "gemma3", "parameters": 2000, "quantization": "Q8_0",
            "file": "base.gguf", "size": 4096, "sha256": "AB" * 32, "license": "test", "chat": False,
            "source": {"kind": "pypi", "packages": [{"name": "base-model", "version": "2.0", "member": "b/base.gguf"}]},
        },
    },
}


def use_registry(tmp_path: Path, monkeypatch, text: str) -> Path:
    path = tmp_path / "registry.json"
    path.write_text(text)
    monkeypatch.setenv("EDGESDK_REGISTRY", str(path))
    monkeypatch.setenv("EDGESDK_HOME", str(tmp_path / "home"))
    return path


def broken(change) -> str:
    raw = copy.deepcopy(VALID)
    change(raw)
    return json.dumps(raw)


def tiny(raw):
    return raw["models"]["tiny"]


def test_a_valid_registry_gives_entries_with_chat_flags_and_generation_defaults(tmp_path, monkeypatch):
    use_registry(tmp_path, monkeypatch, json.dumps(VALID))
    entries = registry.load_registry()
    assert list(entries) == ["tiny", "base"] and registry.default_model() == "tiny"
    assert entries["tiny"].chat is True and entries["base"].chat is False
    assert entries["tiny"].generation.sampling.temperature == 0.2
    assert entries["tiny"].generation.sampling.top_p == 0.9
    assert entries["base"].generation == registry.DEFAULT_GENERATION
    assert entries["base"].sha256 == "ab" * 32


def _set(path, value):
    """A change that sets raw[path...] = value (a missing last key is created)."""
    def change(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _delete(path):
    def change(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


T = ("models", "tiny")
PKG = T + ("source", "packages", 0)

# (what is broken, the change, what the message must say)
CASES = [
    ("no-default", _delete(("default",)), "default is missing"),
    ("default-not-a-string", _set(("default",), 5), "default must be a model name, got 5"),
    ("default-names-no-model", _set(("default",), "huge"), "default names 'huge', which is not in models (tiny, base)"),
    ("wrong-schema-version", _set(("schema",), 2), "schema must be 1, got 2"),
    ("no-models", _set(("models",), {}), "models must be a non-empty object"),
    ("bad-model-name", _set(("models", "a/b"), VALID["models"]["tiny"]), "models['a/b'] is not a model name"),
    ("sha256-not-a-string", _set(T + ("sha256",), 123), "models['tiny'].sha256 must be 64 hex digits, got 123"),
    ("sha256-too-short", _set(T + ("sha256",), "ab" * 31), "models['tiny'].sha256 must be 64 hex digits"),
    ("sha256-not-hex", _set(T + ("sha256",), "zz" * 32), "models['tiny'].sha256 must be 64 hex digits"),
    ("file-not-a-string", _set(T + ("file",), ["tiny.gguf"]), "models['tiny'].file must be a plain .gguf file name"),
    ("file-empty", _set(T + ("file",), ""), "models['tiny'].file must be a plain .gguf file name"),
    ("file-with-separator", _set(T + ("file",), "sub/tiny.gguf"), "models['tiny'].file must be a plain .gguf file"),
    ("file-with-dotdot", _set(T + ("file",), "..tiny.gguf"), "(no path separators, no '..')"),
    ("file-hidden", _set(T + ("file",), ".tiny.gguf"), "models['tiny'].file must be a plain .gguf file name"),
    ("file-not-gguf", _set(T + ("file",), "tiny.bin"), "models['tiny'].file must be a plain .gguf file name"),
    ("size-zero", _set(T + ("size",), 0), "models['tiny'].size must be a positive integer"),
    ("size-negative", _set(T + ("size",), -5), "models['tiny'].size must be a positive integer"),
    ("size-a-string", _set(T + ("size",), "100"), "models['tiny'].size must be a positive integer"),
    ("size-a-float", _set(T + ("size",), 1.5), "models['tiny'].size must be a positive integer"),
    ("size-a-bool", _set(T + ("size",), True), "models['tiny'].size must be a positive integer"),
    ("size-huge", _set(T + ("size",), 1 << 50), "models['tiny'].size must be a positive integer of at most"),
    ("parameters-zero", _set(T + ("parameters",), 0), "models['tiny'].parameters must be a positive integer"),
    ("description-missing", _delete(T + ("description",)), "models['tiny'].description is missing"),
    ("unknown-field", _set(T + ("sha265",), "x"), "models['tiny'].sha265 is not a known field; known: description"),
    ("chat-not-a-bool", _set(T + ("chat",), "no"), "models['tiny'].chat must be true or false, got 'no'"),
    ("generation-not-an-object", _set(T + ("generation",), 0.2), "models['tiny'].generation must be an object"),
    ("generation-unknown-option", _set(T + ("generation",), {"temprature": 0.2}),
     "models['tiny'].generation is not a valid generation config: unknown option(s) temprature"),
    ("generation-bad-value", _set(T + ("generation",), {"top_p": 2}),
     "models['tiny'].generation is not a valid generation config: top_p must be in (0, 1], got 2"),
    ("source-kind", _set(T + ("source", "kind"), "http"), "models['tiny'].source.kind must be 'pypi', got 'http'"),
    ("no-packages", _set(T + ("source", "packages"), []), "models['tiny'].source.packages must be a non-empty list"),
    ("package-name", _set(PKG + ("name",), "tiny model"), "models['tiny'].source.packages[0].name must be a package"),
    ("package-version", _set(PKG + ("version",), "1.0 --pre"), "models['tiny'].source.packages[0].version must be"),
    ("member-escapes", _set(PKG + ("member",), "../../etc/passwd"), "source.packages[0].member must be a relative"),
    ("member-absolute", _set(PKG + ("member",), "/etc/passwd"), "source.packages[0].member must be a relative"),
    ("two-models-one-file", _set(("models", "base", "file"), "tiny.gguf"),
     "models['base'].file 'tiny.gguf' is also the file of 'tiny'"),
]


@pytest.mark.parametrize("change, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_registry_with_a_bad_field_is_rejected_naming_the_entry_and_field(tmp_path, monkeypatch, change, message):
    path = use_registry(tmp_path, monkeypatch, broken(change))
    with pytest.raises(RegistryError) as raised:
        registry.load_registry()
    assert message in str(raised.value)
    assert str(path) in str(raised.value)
    with pytest.raises(RegistryError):
        registry.default_model()


@pytest.mark.parametrize("text, message", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"schema": 1, "schema": 1}', "the key 'schema' appears twice"),
    ("{not json", "cannot read the model registry"),
    ("[]", "the file must be an object, got list"),
    (b"\xff\xfe".decode("latin-1"), "cannot read the model registry"),
], ids=["deep-nesting", "duplicate-key", "not-json", "not-an-object", "not-utf8"])
def test_unreadable_registry_json_is_a_registry_error(tmp_path, monkeypatch, text, message):
    use_registry(tmp_path, monkeypatch, text)
    with pytest.raises(RegistryError, match="registry") as raised:
        registry.load_registry()
    assert message in str(raised.value)


def test_oversized_registry_file_is_refused_without_parsing(tmp_path, monkeypatch):
    use_registry(tmp_path, monkeypatch, " " * (registry.MAX_REGISTRY_BYTES + 1))
    with pytest.raises(RegistryError, match=f"larger than {registry.MAX_REGISTRY_BYTES} bytes"):
        registry.load_registry()


def test_an_empty_file_name_fails_before_anything_is_downloaded(tmp_path, monkeypatch):
    use_registry(tmp_path, monkeypatch, broken(_set(T + ("file",), "")))
    monkeypatch.setenv("EDGESDK_PIP_ARGS", "--index-url http://127.0.0.1:9/simple --retries 0")
    with pytest.raises(RegistryError, match=r"models\['tiny'\].file"):
        registry.pull("tiny")
    assert not (tmp_path / "home").exists()


def test_cli_reports_a_broken_registry_in_one_line_with_status_2(tmp_path, monkeypatch):
    path = use_registry(tmp_path, monkeypatch, broken(_delete(("default",))))
    out = subprocess.run([sys.executable, "-m", "edgesdk.cli", "models"], capture_output=True, text=True,
                         cwd=REPO_ROOT, env=dict(os.environ), timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == f"edgesdk: error: the model registry {path}: default is missing"


def test_shipped_registry_marks_gemma3_as_a_base_model_and_gives_smollm2_its_low_temperature(monkeypatch):
    monkeypatch.delenv("EDGESDK_REGISTRY", raising=False)
    entries = registry.load_registry()
    assert entries["gemma3-270m"].chat is False
    smol = entries["smollm2-135m-instruct"]
    assert smol.chat is True
    assert (smol.generation.sampling.temperature, smol.generation.sampling.top_p) == (0.2, 0.9)
