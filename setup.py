"""Build edgesdk: the Python package plus the native kernel layer (native/) as one shared library.

native/ is plain C11 with no Python in it. setuptools builds it as a plain shared
library, edgesdk/libedgekern.so, only so that pip compiles and installs it with the
package; edgesdk/_native.py loads that file with ctypes and calls the C API
declared in native/include/edgekern.h (ctypes releases the GIL around calls).
Since the library uses no Python C API, one wheel per architecture serves every
Python 3 (tag py3-none-<platform>); tools/build_wheels.py builds them.

When nvcc is found (or EDGESDK_CUDA=1, which requires it; EDGESDK_CUDA=0 skips it), the CUDA kernel
layer (native/cuda/) is built too, by tools/build_cuda.py, as edgesdk/libedgecuda.so with cudart
linked statically, for sm_87 and sm_90 (EDGESDK_CUDA_ARCHS=87,90 by default): only the cuda
backend loads it.
"""
import glob
import os
import shutil
import sys
import sysconfig

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel   # setuptools >= 70.1
except ImportError:
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


# Built as edgesdk/libedgekern.so, the file edgesdk/_native.py loads (its LIBRARY_FILE): not an
# extension-module name, so Python never mistakes it for one, and without the interpreter's ABI suffix.
LIBRARY_NAME = "edgesdk.libedgekern"


class BuildNative(build_ext):
    """build_ext for a plain shared library, failing early, in words, when no C compiler is installed."""

    def run(self):
        # CC may carry arguments ("ccache gcc"); the first word is the program.
        compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
        if shutil.which(compiler) is None:
            sys.exit(
                f"edgesdk: no C compiler found (looked for '{compiler}'). Building edgesdk from source "
                "compiles its native kernels; the wheels on linux x86_64 and aarch64 need no compiler. "
                "Install one first, e.g. 'sudo apt-get install build-essential' on Debian/Ubuntu/"
                "Raspberry Pi OS, then run pip again."
            )
        cuda = cuda_builder()
        super().run()
        if cuda is not None:   # beside libedgekern.so: the package dir in place, the build dir otherwise
            build_cuda_library(cuda, os.path.dirname(self.get_ext_fullpath(LIBRARY_NAME)))

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:   # native/src is a dozen files: compile them on every core
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        # Python's LDSHARED may add its own -L and -rpath (a pyenv or conda prefix): a library that
        # never links libpython needs neither, and a wheel must not point into the build machine.
        linker = [arg for arg in self.compiler.linker_so if not arg.startswith(("-L", "-Wl,-rpath"))]
        self.compiler.set_executable("linker_so", linker)
        super().build_extensions()

    def get_ext_filename(self, fullname):
        filename = super().get_ext_filename(fullname)
        if LIBRARY_NAME.endswith(fullname):   # asked by full name or by its last part
            filename = filename[: -len(sysconfig.get_config_var("EXT_SUFFIX"))] + ".so"
        return filename


def _cuda_builder():
    """tools/build_cuda.py as a module (tools/ is not a package)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_cuda", os.path.join(HERE, "tools", "build_cuda.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cuda_builder():
    """tools/build_cuda.py when the CUDA library is to be built, None for the CPU-only package: built
    when nvcc is found, EDGESDK_CUDA=1 requires it (exiting in words before anything is compiled when
    nvcc is missing), EDGESDK_CUDA=0 skips it. The CPU package is the same either way."""
    wanted = os.environ.get("EDGESDK_CUDA", "").strip()
    if wanted == "0":
        return None
    if not os.path.isfile(os.path.join(HERE, "tools", "build_cuda.py")):
        if wanted == "1":
            sys.exit("edgesdk: EDGESDK_CUDA=1 but this source tree has no CUDA part (tools/build_cuda.py, native/cuda)")
        return None     # a tree copied without it (tools/build_wheels.py's): the CPU package
    builder = _cuda_builder()
    if builder.find_nvcc() is None:
        if wanted == "1":
            sys.exit("edgesdk: EDGESDK_CUDA=1 but nvcc was not found ($NVCC, PATH, $CUDA_HOME, /usr/local/cuda). "
                     "Install the CUDA toolkit (JetPack 6: 'sudo apt-get install nvidia-jetpack'), or unset "
                     "EDGESDK_CUDA to build the CPU-only package.")
        return None
    return builder


def build_cuda_library(builder, package_dir: str) -> None:
    """edgesdk/libedgecuda.so beside libedgekern.so, for EDGESDK_CUDA_ARCHS (default sm_87, sm_90)."""
    archs = [a for a in os.environ.get("EDGESDK_CUDA_ARCHS", ",".join(builder.DEFAULT_ARCHS)).split(",") if a]
    try:
        builder.build(os.path.join(package_dir, builder.LIBRARY_FILE), archs)
    except builder.CudaBuildError as exc:
        sys.exit(f"edgesdk: building the CUDA library failed: {exc}")


class Wheel(bdist_wheel):
    """The library is loaded with ctypes, not imported: the wheel fits any Python 3 of its platform."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


native_sources = sorted(glob.glob(os.path.join("native", "src", "*.c")))
extension = Extension(
    LIBRARY_NAME,
    sources=native_sources,
    # The kernel bodies are headers included by several ISA files: without them here, a change to
    # one alone leaves the old objects in place.
    depends=sorted(glob.glob(os.path.join("native", "src", "*.h"))
                   + glob.glob(os.path.join("native", "include", "*.h"))),
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
    package_data={"edgesdk.models": ["*.json"], "edgesdk": ["libedgecuda.so"]},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildNative, "bdist_wheel": Wheel},
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
        # the ONNX Runtime providers in `edgesdk info`; the ONNX backend and its exporter
        # (8-bit MatMulNBits on the CPU provider needs onnxruntime 1.20; IR version 10, onnx 1.16)
        "onnx": ["onnxruntime>=1.20", "onnx>=1.16"],
        "serial": ["pyserial>=3.5"],        # the serial bridge
        # edgesdk convert: safetensors reads the weights (ml_dtypes gives it numpy's bfloat16),
        # protobuf parses tokenizer.model through sentencepiece's model proto
        "convert": ["safetensors>=0.4", "ml_dtypes>=0.3", "protobuf>=3.20"],
        "server": SERVER_REQUIRES,          # edgesdk serve: the OpenAI-compatible HTTP server
        "test": [                           # everything the whole suite imports (tests/test_packaging.py checks)
            "pytest>=7.4",
            "hypothesis>=6.0",
            "llama-cpp-python>=0.3.0",
            "gguf>=0.17.0",
            "pexpect>=4.8",
            "onnxruntime>=1.20",
            "onnx>=1.16",
            "pyserial>=3.5",
            "auditwheel>=6.1",              # tools/build_wheels.py: the manylinux tag, read from the library
            "setuptools>=64",               # tools/build_wheels.py builds without isolation (offline),
            "wheel>=0.40",                  # and retags with `wheel tags`
            "safetensors>=0.4",             # tests/test_convert.py writes Hugging Face folders
            "ml_dtypes>=0.3",
            "protobuf>=3.20",
            "tokenizers>=0.19",             # tests/test_convert.py: the tokenizer.json reference
            *SERVER_REQUIRES,
            "openai>=1.40",                 # tests/test_server*.py: the real client against our server
            "httpx>=0.27",
            "atheris>=2.3.0; platform_system == 'Linux' and platform_machine == 'x86_64'",  # tests/fuzz; wheels only there
        ],
    },
    entry_points={"console_scripts": ["edgesdk=edgesdk.cli:main"]},
)
