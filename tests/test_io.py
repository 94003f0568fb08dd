"""core/io.py: atomic writes get the mode a plain write would, or keep the replaced file's."""

from __future__ import annotations

import os

from sketchquant.core.io import atomic_write_text


def test_new_file_mode_follows_umask_and_replaced_mode_is_kept(tmp_path):
    mask = os.umask(0)
    os.umask(mask)
    new = atomic_write_text(tmp_path / "a.txt", "x")
    assert os.stat(new).st_mode & 0o777 == 0o666 & ~mask
    private = tmp_path / "b.txt"
    private.write_text("old")
    private.chmod(0o600)
    atomic_write_text(private, "new")
    assert private.read_text() == "new" and os.stat(private).st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
