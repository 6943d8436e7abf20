"""A GGUF model as an ONNX graph for ONNX Runtime's providers, written once and cached.

An export is a directory: `model.onnx` (the graph), `model.onnx.data` (its initializers)
and `manifest.json` (what it was made from and each file's size and sha256). It is keyed
by the GGUF's sha256 and the ExportOptions, so a changed GGUF or another option never
reuses a stale export; it is written into a temporary directory beside its place and
renamed there in one step, so a crash leaves no half-written export under the key. A
cached export whose files do not match its manifest is a CorruptExportError naming it.

    export(gguf_path, out_dir, options)   write an export to out_dir
    cached(gguf_path, options)            the export under $EDGESDK_HOME/onnx, made if missing
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

from .. import gguf
from ..errors import CorruptExportError, ExportError, InvalidArgumentError, MissingDependencyError
from ..registry import home, sha256_file as sha256_of
from ..shape import read_shape
from .graph import KV_DTYPES, ExportOptions, build_model, check_exportable

# Bumped whenever the graph or the weight mapping changes, so older exports are not reused.
EXPORTER_VERSION = 2
GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "edgesdk-onnx-export"
MAX_MANIFEST_BYTES = 1 << 20
MAX_STATIC_CHUNK = 4096
EXTERNAL_THRESHOLD = 1024      # initializers above this many bytes go to the data file


@dataclass(frozen=True)
class Export:
    """An export on disk, checked against its manifest."""
    directory: Path
    options: ExportOptions
    gguf_sha256: str

    @property
    def graph_path(self) -> Path:
        return self.directory / GRAPH_FILE

    @property
    def data_bytes(self) -> int:
        return (self.directory / DATA_FILE).stat().st_size


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("exporting to ONNX needs the onnx package: pip install 'edgesdk[onnx]'") from None
    return onnx


def check_options(options: ExportOptions) -> ExportOptions:
    """InvalidArgumentError naming the option that is out of range."""
    if options.kv_dtype not in KV_DTYPES:
        raise InvalidArgumentError(f"kv_dtype {options.kv_dtype!r} is not one of {', '.join(KV_DTYPES)}")
    for name in ("accuracy_4bit", "accuracy_8bit"):
        if getattr(options, name) not in (0, 1, 2, 3, 4):
            raise InvalidArgumentError(f"{name} must be a MatMulNBits accuracy_level 0..4, got {getattr(options, name)!r}")
    if options.attention not in ("plain", "gqa") or (options.attention == "gqa" and options.static):
        raise InvalidArgumentError(f"attention must be 'plain' or (dynamic graph only) 'gqa', got "
                                   f"{options.attention!r}{' with static=True' if options.static else ''}")
    if not isinstance(options.n_ctx, int) or not 1 <= options.n_ctx <= (1 << 20):
        raise InvalidArgumentError(f"n_ctx must be 1..{1 << 20}, got {options.n_ctx!r}")
    if not isinstance(options.chunk, int) or not 1 <= options.chunk <= MAX_STATIC_CHUNK:
        raise InvalidArgumentError(f"chunk must be 1..{MAX_STATIC_CHUNK}, got {options.chunk!r}")
    return options


def options_key(options: ExportOptions) -> str:
    """The part of the cache key the options make (short, stable across runs)."""
    text = json.dumps({"exporter": EXPORTER_VERSION, **asdict(options)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256_of(path)}


def _write(gguf_path: Path, directory: Path, options: ExportOptions, gguf_sha256: str) -> None:
    """The export's three files into an existing empty directory."""
    onnx = _require_onnx()
    with gguf.open(gguf_path) as f:
        shape = read_shape(f)
        check_exportable(f, shape)
        model = build_model(f, shape, options)
    onnx.save_model(model, str(directory / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA_FILE, size_threshold=EXTERNAL_THRESHOLD)
    del model
    manifest = {"format": MANIFEST_FORMAT, "exporter": EXPORTER_VERSION, "gguf": gguf_path.name,
                "gguf_sha256": gguf_sha256, "options": asdict(options),
                "architecture": shape.architecture, "n_layer": shape.n_layer, "n_vocab": shape.n_vocab,
                "files": {name: _file_entry(directory / name) for name in (GRAPH_FILE, DATA_FILE)}}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _share(directory: Path) -> None:
    """The permissions of an ordinary directory and files (mkdtemp and onnx's writer make them private)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        os.chmod(path, 0o666 & ~umask)


def export(gguf_path: Union[str, os.PathLike], out_dir: Union[str, os.PathLike],
           options: ExportOptions = ExportOptions(), gguf_sha256: Optional[str] = None) -> Export:
    """Write the export of gguf_path to out_dir (which must not exist yet), atomically."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    check_options(options)
    if out_dir.exists():
        raise InvalidArgumentError(f"{out_dir} already exists; export into a new directory")
    sha = gguf_sha256 or sha256_of(gguf_path)
    tmp = None
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        _write(gguf_path, tmp, options, sha)
        _share(tmp)
        os.replace(tmp, out_dir)
    except OSError as exc:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"cannot write the ONNX export to {out_dir}: {exc}") from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Export(out_dir, options, sha)


def verify(directory: Union[str, os.PathLike], options: Optional[ExportOptions] = None,
           gguf_sha256: Optional[str] = None) -> Export:
    """The export in directory after checking every file against its manifest; CorruptExportError otherwise."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    try:
        if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
            raise CorruptExportError(f"{manifest_path}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise CorruptExportError(f"{manifest_path}: unreadable export manifest ({exc}); delete {directory} "
                                 f"to export again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptExportError(f"{manifest_path}: not an edgesdk ONNX export manifest")
    try:
        saved = ExportOptions(**manifest["options"])
        files = {name: manifest["files"][name] for name in (GRAPH_FILE, DATA_FILE)}
        sha = str(manifest["gguf_sha256"])
    except (KeyError, TypeError) as exc:
        raise CorruptExportError(f"{manifest_path}: manifest lacks {exc}") from None
    if options is not None and saved != options:
        raise CorruptExportError(f"{directory}: made with {saved}, not {options}")
    if gguf_sha256 is not None and sha != gguf_sha256:
        raise CorruptExportError(f"{directory}: made from a GGUF with sha256 {sha}, not {gguf_sha256}")
    for name, entry in files.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            raise CorruptExportError(f"{path}: missing from the export; delete {directory} to export again") from None
        if not isinstance(entry, dict) or size != entry.get("bytes") or sha256_of(path) != entry.get("sha256"):
            raise CorruptExportError(f"{path}: does not match the export's manifest (truncated or changed); "
                                     f"delete {directory} to export again")
    return Export(directory, saved, sha)


def cache_dir() -> Path:
    return home() / "onnx"


def cached(gguf_path: Union[str, os.PathLike], options: ExportOptions = ExportOptions(),
           gguf_sha256: Optional[str] = None) -> Export:
    """The export of gguf_path with these options from the cache, written there first when missing."""
    gguf_path = Path(gguf_path)
    check_options(options)
    sha = gguf_sha256 or sha256_of(gguf_path)
    directory = cache_dir() / f"{sha[:32]}-{options_key(options)}"
    if directory.exists():
        return verify(directory, options, sha)
    try:
        return export(gguf_path, directory, options, sha)
    except (InvalidArgumentError, ExportError):
        if directory.exists():        # another process finished the same export first
            return verify(directory, options, sha)
        raise


__all__ = ["Export", "ExportOptions", "EXPORTER_VERSION", "cache_dir", "cached", "check_options", "export",
           "options_key", "verify"]
