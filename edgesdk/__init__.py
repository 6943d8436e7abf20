"""edgesdk: run quantized language models offline, on the device itself.

    import edgesdk
    model = edgesdk.load("smollm2-135m-instruct")
    print(model.chat([{"role": "user", "content": "Hi!"}])["choices"][0]["message"]["content"])
"""
from . import errors
from .errors import EdgeSDKError

__version__ = "0.1.0"


_LAZY = {"load": "model", "Model": "model", "ChatSession": "chat", "LoadConfig": "config",
         "GenerationConfig": "generation", "serial_bridge": "serve.serial"}


def __getattr__(name):
    # The API imports numpy and the backends: only when asked for.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'edgesdk' has no attribute {name!r}")


__all__ = ["errors", "EdgeSDKError", "load", "Model", "ChatSession", "LoadConfig", "GenerationConfig",
           "__version__"]
