"""From a model name to a checked backend and a memory plan: everything `edgesdk.load` does before it allocates.

`prepare()` resolves the name (registry or path), maps the file only if its
size fits the address space, reads its ModelShape once, lets the registry
choose a backend that accepts the model and settings (checking each tensor
once), and fits the memory plan, choosing n_ctx when none is given. `plan()`
and `fit()` are the same steps for `edgesdk info` and scripts that only ask.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Type, Union

from . import backends, gguf, hardware, memory, registry
from .backends.base import Backend, ModelSource
from .config import DEFAULT_LOAD, LoadConfig
from .errors import InvalidArgumentError, MemoryBudgetError
from .shape import read_shape

log = logging.getLogger("edgesdk")

ModelArg = Union[str, os.PathLike, None]


@dataclass
class Prepared:
    """A model ready to open: its source (the file stays open), the chosen backend, the plan."""
    name: str
    source: ModelSource
    backend: Type[Backend]
    checked: Any                   # the backend's checked view of the model
    config: LoadConfig             # with n_ctx and threads resolved
    plan: memory.MemoryPlan        # this process's share (the host's, when there are workers)
    split: Optional[memory.SplitPlan] = None   # the layers on config.workers

    def open(self) -> Backend:
        """The loaded backend; the file goes with it when the backend reads weights from it,
        else it is closed here."""
        try:
            if self.split is not None:
                backend = self.backend.open_split(self.checked, self.config, self.split)
            else:
                backend = self.backend.open(self.checked, self.config)
        except BaseException:
            self.close()
            raise
        if not self.backend.keeps_file:
            self.close()
        return backend

    def close(self) -> None:
        """Close the file (for a plan that is not opened: open() hands it to the backend)."""
        self.checked = None
        self.source.file.close()


def _smaller_models() -> Tuple[Tuple[str, int], ...]:
    """Registry models by size, to suggest when one does not fit (advice: never a reason to fail)."""
    try:
        entries = registry.load_registry().values()
    except Exception:
        return ()
    return tuple(sorted(((e.name, e.size) for e in entries), key=lambda item: item[1]))


def _request(source: ModelSource, cls: Type[Backend], checked: Any, config: LoadConfig) -> memory.PlanRequest:
    def parts_for(n_ctx: int, kv_type: str, n_seq: int):
        return cls.memory_parts(checked, config.with_(n_ctx=n_ctx, kv_type=kv_type, n_seq=n_seq))

    return memory.PlanRequest(model=str(source.path), backend=cls.name, shape=source.shape, n_batch=config.n_batch,
                              threads=config.threads, parts_for=parts_for, kv_types=cls.kv_types,
                              smaller_models=_smaller_models(), n_seq=config.n_seq)


def _open_source(model: ModelArg, budget: Optional[memory.Budget]) -> Tuple[str, ModelSource]:
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise InvalidArgumentError(f"model must be a registry name or a path to a .gguf file, got "
                                   f"{type(model).__name__}")
    name = os.fspath(model) if model is not None else registry.default_model()
    path = Path(registry.resolve(name))
    file = memory.open_within(path, budget, _smaller_models()) if budget is not None else gguf.open(path)
    try:
        return name, ModelSource(path=path, file=file, shape=read_shape(file))
    except BaseException:
        file.close()
        raise


def _split(source: ModelSource, cls: Type[Backend], checked: Any, config: LoadConfig) -> memory.SplitPlan:
    """The layers on config.workers at config.n_ctx, or at the largest context they hold when it is None."""
    offered = cls.probe_workers(config.workers)
    if config.n_ctx is not None:
        return cls.plan_split(checked, config, offered)
    max_ctx = source.shape.context_length or memory.DEFAULT_CONTEXT
    smallest = min(memory.MIN_CONTEXT, max_ctx)
    best = cls.plan_split(checked, config.with_(n_ctx=smallest), offered)   # raises when nothing fits
    lo, hi = smallest // memory.CONTEXT_STEP, max_ctx // memory.CONTEXT_STEP
    while lo < hi:      # largest multiple of CONTEXT_STEP that fits (the shares grow with n_ctx)
        mid = (lo + hi + 1) // 2
        try:
            best = cls.plan_split(checked, config.with_(n_ctx=mid * memory.CONTEXT_STEP), offered)
            lo = mid
        except MemoryBudgetError:
            hi = mid - 1
    if best.n_ctx < lo * memory.CONTEXT_STEP:
        best = cls.plan_split(checked, config.with_(n_ctx=lo * memory.CONTEXT_STEP), offered)
    if max_ctx % memory.CONTEXT_STEP and lo == max_ctx // memory.CONTEXT_STEP:
        try:   # the trained context itself, when it is not a multiple of the step
            best = cls.plan_split(checked, config.with_(n_ctx=max_ctx), offered)
        except MemoryBudgetError:
            pass
    return best


def prepare(model: ModelArg, config: LoadConfig, root: str = "/") -> Prepared:
    """Resolve, open, check and plan `model` under `config` (see the module docstring)."""
    if not isinstance(config, LoadConfig):
        raise InvalidArgumentError(f"config must be a LoadConfig, got {type(config).__name__}")
    budget = memory.device_budget(config.max_memory, root)
    name, source = _open_source(model, budget)
    try:
        config = config.with_(threads=config.threads or hardware.default_threads(root))
        cls, checked = backends.choose(source, config)
        config = config.with_(backend=cls.name)
        trained = source.shape.context_length
        if config.n_ctx is not None and trained is not None and config.n_ctx > trained:
            log.warning("%s was trained for %d positions; n_ctx=%d goes past them, where its answers "
                        "degrade unless the file's RoPE scaling covers it", source.path.name, trained, config.n_ctx)
        split = None
        if config.workers:
            split = _split(source, cls, checked, config)
            config = config.with_(n_ctx=split.n_ctx)
        plan = memory.fit(_request(source, cls, checked, config), cls.plan_budget(checked, budget), n_ctx=config.n_ctx,
                          kv_type=config.kv_type)
        return Prepared(name=name, source=source, backend=cls, checked=checked,
                        config=config.with_(n_ctx=plan.n_ctx), plan=plan, split=split)
    except BaseException:
        source.file.close()
        raise


def plan(model: ModelArg, n_ctx: Optional[int] = None, kv_type: str = DEFAULT_LOAD.kv_type,
         budget: Optional[int] = None, backend: str = DEFAULT_LOAD.backend, n_batch: int = DEFAULT_LOAD.n_batch,
         threads: Optional[int] = None, n_seq: int = DEFAULT_LOAD.n_seq) -> memory.MemoryPlan:
    """Bytes this model needs on this backend, part by part, before anything is loaded (no budget check).

    n_ctx defaults to the model's trained context, threads to the device's
    default. `budget` (bytes) is only recorded in the plan for its summary.
    """
    config = LoadConfig(backend=backend, n_ctx=n_ctx, kv_type=kv_type, n_batch=n_batch, threads=threads,
                        n_seq=n_seq)
    _, source = _open_source(model, None)
    try:
        config = config.with_(threads=config.threads or hardware.default_threads())
        cls, checked = backends.choose(source, config)
        request = _request(source, cls, checked, config)
        recorded = memory.Budget(budget, "given", None) if budget is not None else None
        return request.plan(config.n_ctx or request.max_context, config.kv_type, recorded)
    finally:
        source.file.close()


def fit(model: ModelArg, n_ctx: Optional[int] = None, kv_type: str = DEFAULT_LOAD.kv_type,
        max_memory: Union[int, str, None] = None, backend: str = DEFAULT_LOAD.backend,
        n_batch: int = DEFAULT_LOAD.n_batch, threads: Optional[int] = None, root: str = "/",
        n_seq: int = DEFAULT_LOAD.n_seq) -> memory.MemoryPlan:
    """The plan `edgesdk.load` would use, checked against this device's memory (or max_memory).

    Raises MemoryBudgetError with the parts and the ways out when it does not fit.
    """
    config = LoadConfig(backend=backend, n_ctx=n_ctx, kv_type=kv_type, max_memory=max_memory, n_batch=n_batch,
                        threads=threads, n_seq=n_seq)
    prepared = prepare(model, config, root)
    prepared.close()
    return prepared.plan


__all__ = ["Prepared", "fit", "plan", "prepare"]
