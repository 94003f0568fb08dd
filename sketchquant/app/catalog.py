"""What ships and what a run would use: ``sketchquant list`` and ``sketchquant config``. Torch-free: both
read only the config folders and the registry's schemas."""

from __future__ import annotations

import sys

from sketchquant.app.methods import compose
from sketchquant.core.config import GROUPS, list_choices, to_yaml

__all__ = ["print_catalog", "print_config"]


def print_catalog() -> None:
    """The experiments, every config group's choices and the sweeps (over every config folder)."""
    print("experiments: " + ", ".join(list_choices("experiment")))
    for group in GROUPS:
        print(f"{group}: " + ", ".join(list_choices(group)))
    print("sweeps: " + ", ".join(list_choices("sweeps")))


def print_config(experiment: str, overrides: list[str] | None = None) -> None:
    """The resolved, checked config of ``experiment`` with ``overrides``, as YAML (runs nothing)."""
    sys.stdout.write(to_yaml(compose(experiment, overrides)))
