"""The native library loads, reports CPU features, and honours ISA choices."""
import os
import subprocess
import sys

import pytest

from edgesdk import _native
from edgesdk.errors import UnsupportedISAError


def test_scalar_is_always_available():
    assert "scalar" in _native.isa_available()


def test_current_isa_is_one_of_the_available():
    assert _native.isa_current() in _native.isa_available()


def test_unknown_isa_name_is_rejected_with_the_list():
    with pytest.raises(UnsupportedISAError, match="known: scalar"):
        _native.isa_set("sse9")


def test_env_isa_forces_the_path_in_a_new_process():
    env = dict(os.environ, EDGESDK_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", "from edgesdk import _native; print(_native.isa_current())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "scalar"


def test_env_isa_the_cpu_lacks_is_an_error():
    missing = [n for n in _native.ISA_NAMES if n not in _native.isa_available()]
    env = dict(os.environ, EDGESDK_ISA=missing[0])
    out = subprocess.run([sys.executable, "-c", "import edgesdk._native"], env=env, capture_output=True, text=True)
    assert out.returncode != 0
    assert "not available on this CPU" in out.stderr
