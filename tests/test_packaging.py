"""What `pip install .` builds: the registry ships inside the package, and a
machine without a C compiler gets told what to install, not a compiler trace.

Both run setup.py in a copy of the source tree, so the checkout is untouched."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "*.so", "*.o", "__pycache__", "*.egg-info",
                                     ".pytest_cache")


@pytest.fixture
def source_copy(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(REPO_ROOT, copy, ignore=COPY_IGNORE)
    return copy


def test_registry_json_is_installed_as_package_data(source_copy, tmp_path):
    out_dir = tmp_path / "lib"
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out_dir)],
                   cwd=source_copy, check=True, capture_output=True, text=True)
    installed = out_dir / "edgesdk" / "models" / "registry.json"
    assert installed.read_bytes() == (REPO_ROOT / "models" / "registry.json").read_bytes()


def test_missing_c_compiler_gives_a_clear_message(source_copy):
    env = dict(os.environ, CC="/nonexistent/cc")
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=source_copy, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "no C compiler found (looked for '/nonexistent/cc')" in out.stderr
    assert "build-essential" in out.stderr
    assert not list(source_copy.glob("edgesdk/*.so"))


def test_cuda_required_without_nvcc_fails_in_words_before_compiling(source_copy):
    env = dict(os.environ, EDGESDK_CUDA="1", NVCC="/nonexistent/nvcc")
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=source_copy, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "EDGESDK_CUDA=1 but nvcc was not found" in out.stderr and "EDGESDK_CUDA" in out.stderr
    assert not list(source_copy.glob("edgesdk/*.so"))


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    command = "bash tools/test.sh"
    assert f"```sh\n{command}\n```" in readme
    assert [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))] == [command]


def _setup_arguments() -> dict:
    """What setup.py passes to setuptools.setup(), read by running it with setup() replaced."""
    import runpy

    import setuptools

    captured = {}
    real = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        runpy.run_path(str(REPO_ROOT / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = real
    return captured


def _project(requirement: str) -> str:
    """'llama-cpp-python>=0.3.0' -> 'llama-cpp-python' (normalized as PEP 503 says)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement).group(0)).lower()


# sys.stdlib_module_names and importlib.metadata.packages_distributions are Python 3.10's.
needs_py310 = pytest.mark.skipif(sys.version_info < (3, 10), reason="reads imports with Python 3.10's stdlib lists")


def _imported_projects(directory: Path) -> set:
    """The installed projects whose modules the .py files under directory import (stdlib and our own left out)."""
    import ast
    from importlib.metadata import packages_distributions

    providers = packages_distributions()
    projects = set()
    for path in directory.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                local = (directory / f"{top}.py").exists() or (path.parent / f"{top}.py").exists()
                if top in sys.stdlib_module_names or top == "edgesdk" or local:
                    continue
                assert top in providers, f"{path.name} imports {top}, which no installed project provides"
                projects.update(_project(p) for p in providers[top])
    return projects


@needs_py310
def test_onnxruntime_and_pyserial_are_extras_and_nothing_unused_is_required():
    args = _setup_arguments()
    required = {_project(r) for r in args["install_requires"]}
    extras = {name: {_project(r) for r in reqs} for name, reqs in args["extras_require"].items()}
    assert not required & {"onnxruntime", "pyserial", "psutil"}
    assert "onnxruntime" in extras["onnx"] and "pyserial" in extras["serial"]
    # Every hard requirement is imported by the package; everything it imports is required or an extra.
    imported = _imported_projects(REPO_ROOT / "edgesdk")
    assert required <= imported, f"required but never imported: {sorted(required - imported)}"
    declared = required.union(*extras.values())
    assert imported <= declared, f"imported but not declared: {sorted(imported - declared)}"


@needs_py310
def test_the_test_extra_installs_everything_the_suite_imports():
    args = _setup_arguments()
    available = {_project(r) for r in args["install_requires"] + args["extras_require"]["test"]}
    available |= {"setuptools", "wheel"}    # pyproject.toml's build system: there wherever setup.py runs
    imported = _imported_projects(REPO_ROOT / "tests")
    assert imported <= available, f"tests import projects the test extra lacks: {sorted(imported - available)}"


# Modules only the extras bring (setup.py's extras_require): a plain `pip install edgesdk` has none.
EXTRA_MODULES = ("llama_cpp", "onnxruntime", "onnx", "serial", "safetensors", "ml_dtypes", "starlette", "uvicorn",
                 "prometheus_client")
_WITHOUT_EXTRAS = """
import sys
for name in {blocked!r}:
    sys.modules[name] = None    # import raises ModuleNotFoundError, importlib.util.find_spec gives None
from edgesdk import cli
sys.argv = ["edgesdk"] + sys.argv[1:]
sys.exit(cli.main())
"""


@pytest.mark.parametrize("argv", [["--help"], ["info", "--json"], ["serve", "--help"], ["worker", "--help"],
                                  ["export-onnx", "--help"], ["quantize", "--help"]])
def test_the_cli_runs_without_any_extra_installed(argv):
    """Every subcommand registers (and `info` runs) when no optional library is importable."""
    code = _WITHOUT_EXTRAS.format(blocked=set(EXTRA_MODULES))
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-3000:]
