"""edgesdk: run quantized language models offline, on the device itself.

    import edgesdk
    model = edgesdk.load("smollm2-135m-instruct")
    print(model.chat([{"role": "user", "content": "Hi!"}])["choices"][0]["message"]["content"])
"""
from . import errors
from .errors import EdgeSDKError

__version__ = "0.1.0"


def __getattr__(name):
    # load/Model/ChatSession import numpy and the backends: only when asked for.
    if name in ("load", "Model"):
        from . import model
        return getattr(model, name)
    if name == "ChatSession":
        from .chat import ChatSession
        return ChatSession
    raise AttributeError(f"module 'edgesdk' has no attribute {name!r}")


__all__ = ["errors", "EdgeSDKError", "load", "Model", "ChatSession", "__version__"]
