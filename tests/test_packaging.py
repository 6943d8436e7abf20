"""What `pip install .` builds: the registry ships inside the package, and a
machine without a C compiler gets told what to install, not a compiler trace.

Both run setup.py in a copy of the source tree, so the checkout is untouched."""
from __future__ import annotations

import os
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
    assert not list(source_copy.glob("edgesdk/_edgekern*.so"))


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    command = "bash tools/test.sh"
    assert f"```sh\n{command}\n```" in readme
    assert [line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))] == [command]
