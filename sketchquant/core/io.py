"""Atomic file writes: every file the project writes (checkpoints, configs, results, codes, indexes,
galleries, images, benchmark tables) goes to a temporary file in the target folder, is flushed to disk,
and is moved into place with ``os.replace``. A reader sees the old file or the new one, never half of
one; an interrupted or failed write (a kill, a full disk) leaves the previous file as it was and no
temporary file behind.

:func:`atomic_path` is the one mechanism; the rest are thin helpers for common payloads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DiskFullError",
    "atomic_path",
    "atomic_write",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_savez",
    "atomic_torch_save",
    "atomic_save_image",
]


def _default_mode() -> int:
    """What ``open()`` would create: 0o666 less the process umask (read once, at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_MODE = _default_mode()


class DiskFullError(OSError):
    """Writing ``path`` failed because the disk (or quota) is full; the previous file is intact."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is fsynced and renamed onto ``path``.

    On any exception (``KeyboardInterrupt`` included) the temporary file is removed and ``path`` is left
    as it was. ``ENOSPC``/``EDQUOT`` become :class:`DiskFullError` naming ``path``. ``suffix`` lets writers
    that choose a format by extension (PIL, faiss) see the right one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    # mkstemp creates 0600: give the file the mode a plain write would (or the one it replaces)
    os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _MODE)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                err.errno, f"disk full while writing {path}; the previous file (if any) is intact"
            ) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any], suffix: str = ".tmp") -> Path:
    """``writer(tmp_path)`` writes the content; the result is moved onto ``path`` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, payload: Any, **dump_kwargs: Any) -> Path:
    dump_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(payload, **dump_kwargs))


def atomic_savez(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """``np.savez`` to exactly ``path`` (a file object: numpy adds no ``.npz`` to the temporary name)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, write)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch  # lazy: the core's torch-free writers (JSON, text, npz) serve commands that need no torch

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)

    return atomic_write(path, write)


def atomic_save_image(image: Any, path: str | os.PathLike) -> Path:
    """A PIL image, format from ``path``'s extension."""
    path = Path(path)
    return atomic_write(path, lambda tmp: image.save(tmp), suffix=path.suffix or ".png")
