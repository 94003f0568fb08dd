"""The installed copy (#21): a wheel holds one top-level name, ships its configs, split lists and ranking
kernel, and works from any folder without the checkout: list, config, a one-epoch train on generated
data, index and search, with every sketchquant module imported from the installed copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import conftest
import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_OUTPUTS = {".venv", ".git", "runs", "data", "build", "wandb", ".pytest_cache", ".ruff_cache"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    """What a copy of the working tree leaves out: the top level's outputs, caches everywhere."""
    top = TOP_LEVEL_OUTPUTS if Path(folder) == REPO else set()
    return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the working tree (offline, no build isolation), installed with no
    dependencies into a folder of its own: the test environment's packages serve the rest."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp / "dist").glob("sketchquant-*.whl")
    target = tmp / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], check=True
    )
    return target


def test_the_wheel_has_one_top_level_name_and_its_data(installed):
    (wheel,) = (installed.parent / "dist").glob("sketchquant-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    version = wheel.name.split("-")[1]
    assert {n.split("/")[0] for n in names} == {"sketchquant", f"sketchquant-{version}.dist-info"}
    shipped = {n for n in names if n.startswith("sketchquant/configs/") and n.endswith(".yaml")}
    in_repo = {
        f"sketchquant/configs/{p.relative_to(REPO / 'configs').as_posix()}"
        for p in (REPO / "configs").rglob("*.yaml")
    }
    assert shipped == in_repo
    for data in ("sketchquant/core/retrieval/_ranks.c", "sketchquant/datamodules/splits/tuberlin.txt"):
        assert data in names
    for plugin in ("lightning_modules", "datamodules", "callbacks"):
        assert f"sketchquant/{plugin}/__init__.py" in names
        assert not any(n.startswith(f"{plugin}/") for n in names)


def _run(installed: Path, cwd: Path, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """``sketchquant ARGV`` with only the installed copy importable as sketchquant, in ``cwd``; prints the
    files of the sketchquant modules it imported as the last line (JSON)."""
    probe = (
        "import json, sys\n"
        "from sketchquant.app.cli import main\n"
        f"code = main({list(argv)!r})\n"
        "files = sorted({getattr(m, '__file__', None) or '' for n, m in list(sys.modules.items())"
        " if n == 'sketchquant' or n.startswith('sketchquant.')})\n"
        "print(json.dumps({'code': code, 'files': files}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "SKETCHQUANT_CONFIG_DIR"}
    env.update(PYTHONPATH=str(installed), SKETCHQUANT_CACHE=str(cwd / "cache"))
    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        pytest.fail(f"sketchquant {' '.join(argv)} failed:\n{out.stdout}\n{out.stderr}")
    return out


def _imported_from(out: subprocess.CompletedProcess) -> list[str]:
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    return result["files"]


def test_the_installed_copy_works_from_any_folder(installed, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    every: set[str] = set()

    out = _run(installed, cwd, "list")
    assert "experiments: quantization, zs_sbir" in out.stdout and "sweeps:" in out.stdout
    every.update(_imported_from(out))

    out = _run(installed, cwd, "config", "zs_sbir", "trainer.max_epochs=3")
    assert "max_epochs: 3" in out.stdout and "name: zs_sbir" in out.stdout
    every.update(_imported_from(out))

    overrides = conftest.tiny_overrides("zs_sbir", cwd, **{"trainer.enable_progress_bar": "false"})
    out = _run(installed, cwd, "train", "zs_sbir", *overrides)
    every.update(_imported_from(out))
    (ckpt,) = (cwd / "runs" / "zs_sbir").glob("*/checkpoints/last.ckpt")

    photos = sorted((cwd / "glyphs" / "photo").rglob("*.png"))
    listing = cwd / "photos.txt"
    listing.write_text("".join(f"{p}\n" for p in photos))
    out = _run(installed, cwd, "index", "--ckpt", str(ckpt), "--images", str(listing), "--out", "gallery")
    every.update(_imported_from(out))

    sketch = sorted((cwd / "glyphs" / "sketch").rglob("*.png"))[0]
    out = _run(installed, cwd, "search", "--gallery", "gallery", str(sketch), "--k", "3", "--json")
    hits = json.loads(out.stdout.strip().splitlines()[0])["queries"][0]["hits"]
    assert len(hits) == 3
    every.update(_imported_from(out))

    every.discard("")
    outside = sorted(f for f in every if not f.startswith(str(installed)))
    assert not outside, f"modules imported from outside the installed copy: {outside[:5]}"
    assert any("/lightning_modules/" in f for f in every) and any("/callbacks/" in f for f in every)


def test_a_user_config_folder_takes_the_shipped_groups(installed, tmp_path):
    mine = tmp_path / "myconfigs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(
        "defaults:\n  trainer: cpu\n  data: glyphs\n  model: zs_sbir\ntrainer:\n  max_epochs: 2\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "sketchquant", "--config-dir", str(tmp_path / "myconfigs"), "config", "mine"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(installed)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        "experiment: mine" in out.stdout
        and "max_epochs: 2" in out.stdout
        and "accelerator: cpu" in out.stdout
    )
    listed = subprocess.run(
        [sys.executable, "-m", "sketchquant", "list"],
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": str(installed),
            "SKETCHQUANT_CONFIG_DIR": str(tmp_path / "myconfigs"),
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "mine" in listed.splitlines()[0] and "zs_sbir" in listed.splitlines()[0]
