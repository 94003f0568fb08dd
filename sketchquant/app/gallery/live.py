"""A gallery that follows its folder while a server runs: rebuilt, updated, deleted, built again.

:meth:`LiveGallery.get` stats ``manifest.json`` (one ``stat`` per request). While the manifest is the
one it opened, it answers with that gallery. When a build has swapped in a new manifest, the new
gallery is opened (reusing the network when the checkpoint is the same) and answers from then on;
requests that arrive while it opens keep the previous one, so no request waits or fails on a rebuild.
A new manifest that cannot be opened leaves the previous gallery answering, with one warning; a
manifest that is gone (the folder deleted) is :class:`GalleryGoneError` until a gallery appears there
again.

Opening loads everything a search reads (:meth:`Gallery.open`), and a build keeps the data folder of
the generation it replaces (:mod:`.build`), so a gallery being answered from never needs its folder.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sketchquant.app.gallery.records import MANIFEST, GalleryError
from sketchquant.app.gallery.search import Gallery

#: a new manifest that failed to open is tried again after this many seconds (or when it changes)
RETRY_SECONDS = 5.0


class GalleryGoneError(GalleryError):
    """The gallery folder (its manifest) no longer exists."""


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path / MANIFEST)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class LiveGallery:
    """The current generation of the gallery at ``path`` (see the module docstring). The first open
    happens here, so a bad gallery or checkpoint fails at start with its message."""

    def __init__(
        self,
        path: str | os.PathLike,
        ckpt: str | os.PathLike | None = None,
        *,
        force: bool = False,
        trust: bool = False,
        overrides: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self._kw = dict(ckpt=ckpt, force=force, trust=trust, overrides=tuple(overrides))
        self._reload = threading.Lock()
        self._failed: tuple[tuple[int, int, int] | None, float] | None = None
        self._sig = _signature(self.path)
        self._gallery = Gallery.open(self.path, **self._kw)
        self.reloads = 0

    @property
    def gallery(self) -> Gallery:
        """The generation answering now (without looking at the folder)."""
        return self._gallery

    def get(self) -> Gallery:
        """The gallery to answer this request with (see the module docstring)."""
        sig = _signature(self.path)
        if sig is None:
            raise GalleryGoneError(
                f"gallery {self.path} is gone (no {MANIFEST}): build it again with `sketchquant index "
                f"... --out {self.path}`; this server picks it up without a restart"
            )
        if sig == self._sig or not self._reload.acquire(blocking=False):
            return self._gallery  # unchanged, or another request is opening the new one
        try:
            if sig != self._sig:
                self._switch(sig)
        finally:
            self._reload.release()
        return self._gallery

    def _switch(self, sig: tuple[int, int, int]) -> None:
        if self._failed and self._failed[0] == sig and time.monotonic() - self._failed[1] < RETRY_SECONDS:
            return
        for _ in range(3):  # a build finishing while this opens: open what the manifest names now
            try:
                new = Gallery.open(self.path, reuse=self._gallery, **self._kw)
            except Exception as err:  # noqa: BLE001 - a bad new gallery must not fail the request
                now_sig = _signature(self.path)
                if now_sig is not None and now_sig != sig:
                    sig = now_sig
                    continue
                self._failed = (sig, time.monotonic())
                first = (str(err).splitlines() or [type(err).__name__])[0]
                print(
                    f"warning: the new gallery in {self.path} cannot be opened ({first}); still answering "
                    f"from the previous one ({self._gallery.manifest['data_dir']})",
                    file=sys.stderr,
                )
                return
            self._gallery, self._sig, self._failed = new, sig, None
            self.reloads += 1
            return
