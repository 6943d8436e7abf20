"""`edgesdk info` on the real models, in a subprocess like a user runs it; the
expected numbers come from the gguf package's reader and from the model cards."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf as gguf_pkg
import pytest

from edgesdk import _native

REPO_ROOT = Path(__file__).resolve().parent.parent


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgesdk.cli", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)


def info_json(model):
    out = cli("info", str(model), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def quant_mix_from_gguf_reader(path):
    """Bytes per tensor type, counted by the gguf package's reader."""
    mix = {}
    for t in gguf_pkg.GGUFReader(str(path)).tensors:
        mix[t.tensor_type.name] = mix.get(t.tensor_type.name, 0) + int(t.n_bytes)
    return mix


@pytest.mark.models
def test_info_json_on_smollm2_reports_its_shape_and_tokenizer(smollm2_path):
    report = info_json("smollm2-135m-instruct")
    m = report["model"]
    assert m["architecture"] == "llama"
    assert m["parameters"] == 134515008
    assert (m["n_layers"], m["n_heads"], m["n_kv_heads"], m["head_dim"]) == (30, 9, 3, 64)
    assert (m["embedding_length"], m["feed_forward_length"], m["context_length"]) == (576, 1536, 8192)
    assert m["tokenizer_model"] == "gpt2" and "BPE" in m["tokenizer_kind"]
    assert m["vocab_size"] == 49152
    assert m["has_chat_template"] is True
    assert m["file_size"] == Path(smollm2_path).stat().st_size
    assert {u["type_name"]: u["nbytes"] for u in m["quantization"]} == quant_mix_from_gguf_reader(smollm2_path)
    native = report["native"]
    assert native["isa_current"] == _native.isa_current()
    assert native["cpu_features"] == _native.cpu_features()


@pytest.mark.models
@pytest.mark.slow
def test_info_json_on_gemma3_reports_its_shape_and_tokenizer(gemma3_path):
    m = info_json(gemma3_path)["model"]  # a path works as well as a registry name
    assert m["architecture"] == "gemma3"
    assert (m["n_layers"], m["n_heads"], m["n_kv_heads"], m["head_dim"]) == (18, 4, 1, 256)
    assert (m["embedding_length"], m["feed_forward_length"], m["sliding_window"]) == (640, 2048, 512)
    assert m["tokenizer_model"] == "llama" and "SentencePiece" in m["tokenizer_kind"]
    assert m["vocab_size"] == 262144
    assert m["has_chat_template"] is False
    assert m["file_type"] == "Q4_K_M"
    assert {u["type_name"]: u["nbytes"] for u in m["quantization"]} == quant_mix_from_gguf_reader(gemma3_path)


@pytest.mark.models
def test_info_text_names_every_section(smollm2_path):
    out = cli("info", "smollm2-135m-instruct")
    assert out.returncode == 0, out.stderr
    for label in ("architecture", "parameters", "layers", "heads", "context", "quantization", "Q4_1", "Q8_0",
                  "tokenizer", "chat template", "cpu features", "kernel ISA"):
        assert label in out.stdout, label


def test_info_without_a_model_shows_the_kernel_isa_and_default_threads():
    out = cli("info")
    assert out.returncode == 0, out.stderr
    assert f"kernel ISA      {_native.isa_current()} (available:" in out.stdout
    assert "default threads" in out.stdout
    report = json.loads(cli("info", "--json").stdout)
    assert report["native"]["isa_current"] == _native.isa_current()
    assert report["native"]["isa_available"] == _native.isa_available()


def test_info_on_a_missing_path_is_a_clear_error_with_status_2(tmp_path):
    out = cli("info", str(tmp_path / "missing.gguf"))
    assert out.returncode == 2
    assert "neither a known model" in out.stderr and "Traceback" not in out.stderr


def test_info_on_a_file_that_is_not_gguf_is_a_clear_error_with_status_2(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("this is a text file, not a model, but long enough for a header\n")
    out = cli("info", str(path))
    assert out.returncode == 2
    assert "bad magic at byte offset 0" in out.stderr and "Traceback" not in out.stderr


def test_file_type_names_match_the_gguf_package():
    from gguf.constants import LlamaFileType

    from edgesdk.modelinfo import FILE_TYPE_NAMES

    expected = {t.value: t.name.replace("MOSTLY_", "").replace("ALL_", "")
                for t in LlamaFileType if t.name != "GUESSED"}
    assert {k: FILE_TYPE_NAMES.get(k) for k in expected} == expected


def test_help_lists_the_subcommands():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("pull", "models", "info"):
        assert command in out.stdout


def test_info_works_without_onnxruntime_installed():
    # onnxruntime is the optional `edgesdk[onnx]` extra: make `import onnxruntime` fail as if it were absent.
    code = ("import sys; sys.modules['onnxruntime'] = None\n"
            "from edgesdk.cli import main; sys.exit(main(['info']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert "budget" in out.stdout and not any(line.startswith("onnx") for line in out.stdout.splitlines())


def test_info_spells_each_cpu_feature_one_way_and_shows_jetson_lines_only_on_a_jetson():
    from edgesdk import hardware

    out = cli("info")
    assert out.returncode == 0, out.stderr
    rows = {line[:15].strip(): line[15:].strip() for line in out.stdout.splitlines() if line[:15].strip()}
    native, probed = set(rows["cpu features"].split()), set(rows["features"].split())
    assert native <= probed, f"spelled differently or missing: {sorted(native - probed)}"
    if hardware.probe(onnx=False).board.kind != "jetson":
        assert "cuda" not in rows and "L4T" not in out.stdout


def test_info_lists_every_registered_backend_with_its_availability():
    from edgesdk import backends

    report = json.loads(cli("info", "--json").stdout)
    listed = {b["name"]: b for b in report["backends"]["backends"]}
    assert list(listed) == list(backends.names())
    for name, status in backends.availability().items():
        assert listed[name]["available"] == status.ok and listed[name]["reason"] == status.reason
    text = cli("info").stdout
    for name, status in backends.availability().items():
        assert f"{name:10} {'available' if status else 'not available: ' + status.reason}" in text
