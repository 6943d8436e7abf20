"""edgesdk: run quantized language models offline, on the device itself.

    import edgesdk
    model = edgesdk.load("smollm2-135m-instruct")
    print(model.chat([{"role": "user", "content": "Hi!"}])["choices"][0]["message"]["content"])
"""
from . import errors
from .errors import EdgeSDKError

__version__ = "0.1.0"

__all__ = ["errors", "EdgeSDKError", "__version__"]
