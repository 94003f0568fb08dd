"""The one results-table printer (rich), used by training, evaluation, sweeps, search and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_table", "results_table", "print_results", "fmt"]


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` decimals (ints as they are), ``None`` as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    console: Console | None = None,
    digits: int = 4,
) -> None:
    """A table with the first column left-aligned and the rest right-aligned."""
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(str(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(fmt(v, digits) for v in row))
    (console or Console(width=max(100, 14 * len(columns)))).print(table)


def results_table(
    metrics: dict[str, float], unnamed: str | None = None
) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Rows = feature sets in the order the metrics name them, columns = retrieval metrics.

    Only retrieval metrics enter (``map_*``, ``p_*``): ``test/proto/map_all`` goes to row ``proto``,
    ``test/map_all`` to the row of the method's unnamed feature set (``unnamed``, e.g. ``raw``). Losses,
    accuracies, ``*_micro`` and counts are left out (they stay in ``results.json`` and ``metrics.csv``)."""
    rows: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        leaf = parts[-1]
        if len(parts) < 2 or leaf.endswith("_micro") or not leaf.startswith(("map_", "p_")):
            continue
        variant = parts[1] if len(parts) == 3 else (unnamed or "features")
        rows.setdefault(variant, {})[leaf] = value
    columns = sorted({c for r in rows.values() for c in r}, key=lambda c: (not c.startswith("map"), c))
    body = [(v, [f"{rows[v][c]:.4f}" if c in rows[v] else "" for c in columns]) for v in rows]
    return columns, body


def print_results(title: str, metrics: dict[str, float], unnamed: str | None = None) -> None:
    """The test table of a run: one row per feature set, with the chance level when it was logged."""
    columns, body = results_table(metrics, unnamed)
    chance = {k.split("/")[-1]: v for k, v in metrics.items() if k.split("/")[-1].startswith("chance_")}
    if chance:  # one row: each chance value under its metric
        by_metric = {name[len("chance_") :]: value for name, value in chance.items()}
        body.append(("chance", [f"{by_metric[c]:.4f}" if c in by_metric else "" for c in columns]))
    print_table(title, ["features", *columns], [(v, *cells) for v, cells in body])
