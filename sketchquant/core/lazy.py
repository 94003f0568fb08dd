"""Names that load on first use: a package's lazy exports and ``"module:Name"`` import paths.

A package ``__init__`` that re-exports heavy classes (a LightningModule, a FAISS index helper) would make
every import of the package pay for all of them: ``sketchquant config`` would import Lightning. Instead::

    __getattr__, __dir__ = lazy_exports(__name__, {"RetrievalEvaluator": ".retrieval_evaluator", ...})

and the registry names classes by import path (``"sketchquant.lightning_modules.quantization:
QuantizationModule"``), loaded by :func:`load_object` only when a command builds one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports", "load_object"]


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a name to the module (absolute, or
    relative to ``package`` with a leading dot) that defines it; the module is imported on first access."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__


def load_object(path: str) -> Any:
    """The object an import path ``"package.module:Name"`` names (``Name`` may be dotted)."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"import path {path!r} is not of the form 'package.module:Name'")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj
