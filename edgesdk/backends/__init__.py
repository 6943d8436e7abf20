"""Backends: native (edgesdk's own kernels), llamacpp (llama-cpp-python); one interface in base.py."""
from .base import Backend, BackendInfo, available_backends

__all__ = ["Backend", "BackendInfo", "available_backends"]
