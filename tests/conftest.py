"""Shared fixtures: the real models (pulled once into the cache, then offline), seeded RNGs, the
active kernel family."""
from __future__ import annotations

import numpy as np
import pytest


def _model(name: str):
    from edgesdk import registry

    # pull() does no network when the file is already cached.
    return registry.pull(name)


@pytest.fixture(scope="session")
def smollm2_path():
    """SmolLM2-135M-Instruct Q4_1: llama architecture, GPT-2 style BPE, chat template."""
    return _model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3_path():
    """Gemma-3-270M Q4_K_M: gemma3 architecture, SentencePiece vocabulary, Q4_K/Q5_0/Q6_K/Q8_0."""
    return _model("gemma3-270m")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def isa(request):
    """Switch the active kernel family for one test (parametrize it indirectly), then restore it."""
    from edgesdk import _native

    previous = _native.isa_current()
    _native.isa_set(request.param)
    yield request.param
    _native.isa_set(previous)
