"""Build edgesdk: the Python package plus the native kernel layer (native/) as one shared library.

native/ is plain C11 with no Python in it. It is compiled into the extension
module edgesdk._edgekern only so that pip builds and installs it with the
package; edgesdk/_native.py loads that file with ctypes and calls the C API
declared in native/include/edgekern.h (ctypes releases the GIL around calls).
"""
import glob
import os
import shutil
import sys
import sysconfig

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildNative(build_ext):
    """build_ext that fails early, in words, when no C compiler is installed."""

    def run(self):
        # CC may carry arguments ("ccache gcc"); the first word is the program.
        compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
        if shutil.which(compiler) is None:
            sys.exit(
                f"edgesdk: no C compiler found (looked for '{compiler}'). edgesdk compiles its "
                "native kernels at install time. Install one first, e.g. "
                "'sudo apt-get install build-essential' on Debian/Ubuntu/Raspberry Pi OS, "
                "then run pip again."
            )
        super().run()


native_sources = sorted(glob.glob(os.path.join("native", "src", "*.c")))
extension = Extension(
    "edgesdk._edgekern",
    sources=native_sources + [os.path.join("edgesdk", "_edgekern_module.c")],
    include_dirs=[os.path.join("native", "include")],
    define_macros=[("EK_BUILDING", "1")],
    # No -march=native: one build must run on every CPU of its architecture;
    # the ISA files enable their instruction sets per function and dispatch.c chooses.
    extra_compile_args=["-std=c11", "-O3", "-fvisibility=hidden", "-pthread", "-Wall", "-Wno-unused-function"],
    extra_link_args=["-pthread", "-lm"],
)

SERVER_REQUIRES = ["starlette>=0.37", "uvicorn>=0.30", "prometheus-client>=0.20"]

setup(
    name="edgesdk",
    version="0.1.0",
    description="Run quantized LLMs offline on the device: Raspberry Pi, Jetson, x86 mini-PCs, NPU boards.",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    # models/ is data, not code: it installs as edgesdk/models so that
    # edgesdk.registry finds registry.json beside itself once installed.
    packages=find_packages(include=["edgesdk", "edgesdk.*"]) + ["edgesdk.models"],
    package_dir={"edgesdk.models": "models"},
    package_data={"edgesdk.models": ["*.json"]},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildNative},
    install_requires=[
        "numpy>=1.22",
        "sentencepiece>=0.1.99",
        "jinja2>=3.1",
        "markupsafe>=2.0",   # jinja2's escaping, called by the template sandbox itself
        "regex>=2023.10.3",  # Unicode 15.1 tables or newer (see edgesdk/tokenizer/pretokenize.py)
        "tqdm>=4.60",        # the CLI's download progress bar
    ],
    # Optional parts, each with the library only it needs: onnxruntime is 28 MB and has no
    # 32-bit ARM wheel, so a Raspberry Pi OS (armhf) install must not require it.
    extras_require={
        "llamacpp": ["llama-cpp-python>=0.3.0"],
        "onnx": ["onnxruntime>=1.16"],      # the ONNX Runtime providers in `edgesdk info`, the ONNX backend
        "serial": ["pyserial>=3.5"],        # the serial bridge
        "server": SERVER_REQUIRES,          # edgesdk serve: the OpenAI-compatible HTTP server
        "test": [                           # everything the whole suite imports (tests/test_packaging.py checks)
            "pytest>=7.4",
            "hypothesis>=6.0",
            "llama-cpp-python>=0.3.0",
            "gguf>=0.17.0",
            "pexpect>=4.8",
            "onnxruntime>=1.16",
            "pyserial>=3.5",
            *SERVER_REQUIRES,
            "openai>=1.40",                 # tests/test_server*.py: the real client against our server
            "httpx>=0.27",
            "atheris>=2.3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",  # tests/fuzz; wheels only there
        ],
    },
    entry_points={"console_scripts": ["edgesdk=edgesdk.cli:main"]},
)
