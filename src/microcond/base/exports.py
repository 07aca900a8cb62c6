"""Lazy public names for a package's ``__init__`` (PEP 562): importing the package imports none
of its modules; a name's module is imported when the name is first used."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_names(package: str, exports: dict[str, str], namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``exports`` map each public name to the
    module that defines it; ``namespace`` is the package's ``globals()``."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
