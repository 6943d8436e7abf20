"""The backend registry: every backend edgesdk has, by name, and how "auto" chooses.

Each backend is one module of this package whose class registers itself with
`@register`; every module here but `base` (and private `_*` ones) is imported
as a backend. `load`, the memory planner, `edgesdk info`, the CLI's --backend
choices and the backend contract tests all iterate this registry, so adding a
backend is one new file (plus its tests).

Importing a backend module must not need the backend's library: `available()`
says whether the library is there and why not.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Dict, List, Tuple, Type

from ..config import LoadConfig
from ..errors import BackendUnavailableError, InvalidArgumentError, ModelFormatError, UnsupportedModelError
from .base import Availability, Backend, BackendInfo, ModelSource

AUTO = "auto"
_NOT_BACKENDS = ("base",)

_REGISTRY: Dict[str, Type[Backend]] = {}
_imported = False


def register(cls: Type[Backend]) -> Type[Backend]:
    """Class decorator: make a Backend subclass known by its `name`."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name == AUTO:
        raise TypeError(f"{cls.__name__} needs a backend name other than {AUTO!r}")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise TypeError(f"backend name {name!r} is taken by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def backend_modules() -> Tuple[str, ...]:
    """The modules of this package that hold backends."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                        if m.name not in _NOT_BACKENDS and not m.name.startswith("_")))


def _registry() -> Dict[str, Type[Backend]]:
    global _imported
    if not _imported:
        for module in backend_modules():
            importlib.import_module(f"{__name__}.{module}")
        _imported = True
    return _REGISTRY


def _order(cls: Type[Backend]):
    # auto's preference first, then the backends only named explicitly, by name.
    return (cls.auto_rank is None, cls.auto_rank or 0, cls.name)


def names() -> Tuple[str, ...]:
    """Every registered backend, in the order "auto" tries them (explicit-only ones last)."""
    return tuple(cls.name for cls in sorted(_registry().values(), key=_order))


def choices() -> Tuple[str, ...]:
    """What a user may ask for: "auto" and every backend name."""
    return (AUTO,) + names()


def get(name: str) -> Type[Backend]:
    """The backend class registered as name; InvalidArgumentError listing the choices otherwise."""
    registry = _registry()
    if name not in registry:
        raise InvalidArgumentError(f"unknown backend {name!r}; choose one of {', '.join(choices())}")
    return registry[name]


def availability() -> Dict[str, Availability]:
    """Each backend's Availability on this machine, in names() order."""
    return {name: get(name).available() for name in names()}


def available() -> List[str]:
    """Names of the backends that can run here."""
    return [name for name, ok in availability().items() if ok]


def _auto_order() -> List[Type[Backend]]:
    return [get(name) for name in names() if get(name).auto_rank is not None]


def choose(source: ModelSource, config: LoadConfig) -> Tuple[Type[Backend], object]:
    """(backend class, its checked view of the model) for config.backend.

    A named backend is used or the reason it cannot be is raised. "auto" takes
    the first backend, in auto_rank order, that is available and accepts the
    model and settings; when none does, BackendUnavailableError lists why each
    one declined.
    """
    if config.backend != AUTO:
        cls = get(config.backend)
        status = cls.available()
        if not status:
            raise BackendUnavailableError(f"the {cls.name} backend is not available here: {status.reason}")
        return cls, cls.check(source, config)
    declined = []
    for cls in _auto_order():
        status = cls.available()
        if not status:
            declined.append(f"{cls.name}: {status.reason}")
            continue
        try:
            return cls, cls.check(source, config)
        except (UnsupportedModelError, InvalidArgumentError) as exc:
            declined.append(f"{cls.name}: {exc}")
        except ModelFormatError:
            raise      # the file itself is bad: another backend will not make it good
    raise BackendUnavailableError(f"no backend can run {source.path.name} here: " + "; ".join(declined))


__all__ = ["AUTO", "Availability", "Backend", "BackendInfo", "backend_modules", "ModelSource", "availability",
           "available", "choices", "choose", "get", "names", "register"]
