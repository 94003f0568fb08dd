"""Helpers behind ``sketchquant data make`` / ``sketchquant data preview`` (the CLI only parses arguments)."""

from __future__ import annotations

import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from .generated import GENERATORS, default_out, generator, settings_class
from .glyphs import MANIFEST, make_contact_sheet

#: the kinds ``sketchquant data make --kind`` accepts
KINDS = tuple(GENERATORS)


def _coerce(key: str, value: Any, default: Any, annotation: Any = None) -> Any:
    if not isinstance(value, str):
        return value
    if default is None:  # an optional setting (``int | None = None``): "none" or the annotated type
        if value.lower() in ("none", "null"):
            return None
        default = 0 if "int" in str(annotation) else default
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ValueError(f"{key}={value!r}: expected {type(default).__name__}") from None
    return value


def data_make(
    out: str | Path | None = None,
    kind: str = "sketch_photo",
    overrides: dict | list[str] | None = None,
) -> Path:
    """Generate an embedded dataset (``kind``: one of :data:`KINDS`) and print a one-line summary.

    ``overrides`` are the generator's settings (the fields of its settings dataclass), a dict or the command
    line's ``key=value`` strings (strings are converted to the field's type); unknown keys raise
    ``ValueError`` listing the valid ones.
    """
    if isinstance(overrides, (list, tuple)):
        bad = [x for x in overrides if "=" not in x]
        if bad:
            raise ValueError(f"generator settings are key=value, got {' '.join(bad)}")
        overrides = dict(x.split("=", 1) for x in overrides)
    fn, _ = generator(kind)
    options = {f.name: f for f in fields(settings_class(kind))}
    kwargs = {}
    for k, v in (overrides or {}).items():
        if k not in options:
            raise ValueError(f"unknown {kind} generator option {k!r}; valid: {', '.join(sorted(options))}")
        kwargs[k] = _coerce(k, v, options[k].default, options[k].type)
    out = Path(out if out is not None else default_out(kind))
    existed = (out / MANIFEST).exists()
    t0 = time.perf_counter()
    path = fn(out, **kwargs)
    secs = time.perf_counter() - t0
    man = json.loads((path / MANIFEST).read_text())
    what_kind = (
        "glyph dataset" if GENERATORS[kind][0].startswith("sketchquant.datamodules.glyphs") else "dataset"
    )
    counts = man.get("counts", {})
    what = ", ".join(f"{k} {v}" for k, v in counts.items())
    verb = "reused existing" if existed and not kwargs.get("overwrite") else f"wrote ({secs:.1f} s)"
    print(
        f"{kind} {what_kind} {verb}: {path} [{what}; {man['params']['image_size']} px, "
        f"seed {man['params']['seed']}]"
    )
    return path


def data_preview(data_dir: str | Path, out: str | Path = "contact_sheet.png", **kwargs: Any) -> Path:
    """Write a contact sheet PNG of a dataset folder and print where it went."""
    path = make_contact_sheet(data_dir, out, **kwargs)
    print(f"contact sheet of {data_dir} written to {path}")
    return path
