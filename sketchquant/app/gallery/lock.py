"""One build at a time per gallery folder: an ``fcntl.flock`` on ``GALLERY/build.lock``.

The lock is held by the open file, so the kernel releases it when the build ends in any way (an
exception, SIGKILL, a lost node's process dying): a crashed build never leaves a stale lock behind. The
file holds who took it (pid, host, start time) for the message a second build gets; it stays in the
folder (removing it would let two builds lock two different files of one name).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sketchquant.app.gallery.records import GalleryError, now

LOCK = "build.lock"

#: the variables naming a process's global rank under torchrun / SLURM (rank 0 alone takes the lock)
RANK_VARS = ("RANK", "SLURM_PROCID")


class GalleryBusyError(GalleryError):
    """Another build holds the gallery's lock."""


def helper_rank() -> bool:
    """True in a process of a multi-process build that is not its first (rank > 0): the first process
    holds the lock for all of them."""
    return any(int(os.environ.get(var) or 0) > 0 for var in RANK_VARS)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
        return f"pid {info['pid']} on host {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its name yet"


@contextmanager
def build_lock(gallery: Path) -> Iterator[Path]:
    """Hold ``gallery/build.lock`` for the ``with`` block (the folder is created if needed); another
    build holding it raises :class:`GalleryBusyError` naming it, at once (no waiting). A folder this
    call created is removed again when the block fails before anything but the lock was written."""
    created = not gallery.exists()
    gallery.mkdir(parents=True, exist_ok=True)
    path = gallery / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GalleryBusyError(
                f"gallery {gallery} is being built by another process ({_holder(path)}; lock file {path}): "
                "wait for that build to finish, or stop it"
            ) from None
        try:  # locked: still the file of that name? (a clean-up may have removed it meanwhile)
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    except BaseException:
        if created and [p.name for p in gallery.iterdir()] == [LOCK]:
            path.unlink(missing_ok=True)
            gallery.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock
