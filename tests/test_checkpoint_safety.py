"""Checkpoints from someone else (sketchquant.app.checkpoints): a file whose pickle would run code is
refused by every command that reads one, in one line naming it, and its code never runs (a marker file
it would write never appears); ``--trust-checkpoint`` loads it the old way. What our own training writes
loads weights-only (both methods, mid-epoch ``last.ckpt`` with the exact-resume state included). A
gallery's checkpoint is checked by sha256 before it is read: another file of the same size and mtime is
refused. Inference (index, search, serve, evaluate) builds no distillation teacher."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
from pathlib import Path

import conftest
import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore")


class CodeRunner:
    """Pickled as a call of ``exec``: loading the checkpoint it sits in writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def tiny_run(tmp_path_factory, experiment: str) -> tuple[Path, str]:
    """``(folder, last.ckpt)`` of one tiny training run of ``experiment`` per test session, shared by the
    gallery, serve and checkpoint-safety tests (its data under ``folder``). It writes ``last.ckpt`` every
    step, so its ``last.prev.ckpt`` was written inside the epoch."""
    from sketchquant.app.methods import compose
    from sketchquant.app.train import train

    tmp = tmp_path_factory.getbasetemp() / f"tiny-run-{experiment}"
    done = tmp / "checkpoint.txt"
    if done.is_file():
        return tmp, done.read_text()
    extra = {"trainer.enable_progress_bar": "false", "test_after_fit": "false"}
    extra.update({"checkpoint.every_n_steps": 1, "trainer.limit_train_batches": 3})
    out = train(compose(experiment, conftest.tiny_overrides(experiment, tmp, **extra)))
    done.write_text(os.path.join(out["run_dir"], "checkpoints", "last.ckpt"))
    return tmp, done.read_text()


def _evil(ckpt: str, dest: Path, marker: Path) -> Path:
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    raw["payload"] = CodeRunner(marker)
    torch.save(raw, dest)
    return dest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from sketchquant.app.gallery import build_gallery

    tmp = tmp_path_factory.mktemp("safety")
    data, zs = tiny_run(tmp_path_factory, "zs_sbir")
    quant_data, quant = tiny_run(tmp_path_factory, "quantization")
    root = data / "glyphs"
    unseen = (root / "unseen_classes.txt").read_text().split()
    photos = tmp / "photos"
    for name in unseen:
        shutil.copytree(root / "photo" / name, photos / name)
    gallery = tmp / "gallery"
    build_gallery(zs, photos, gallery, quiet=True)
    marker = tmp / "marker"
    evil = _evil(zs, tmp / "evil.ckpt", marker)
    evil_quant = _evil(quant, tmp / "evil-quant.ckpt", marker)
    # a gallery whose manifest records the code-running checkpoint (its true sha256: it passes that check)
    from sketchquant.app.gallery.store import checkpoint_record

    evil_gallery = tmp / "evil-gallery"
    shutil.copytree(gallery, evil_gallery)
    m = json.loads((evil_gallery / "manifest.json").read_text())
    m["checkpoint"] = checkpoint_record(evil)
    (evil_gallery / "manifest.json").write_text(json.dumps(m))
    sketch = sorted((root / "sketch" / unseen[0]).iterdir())[0]
    return {
        "tmp": tmp,
        "data": data,
        "quant_data": quant_data,
        "zs": zs,
        "quant": quant,
        "photos": photos,
        "gallery": gallery,
        "evil": evil,
        "evil_quant": evil_quant,
        "evil_gallery": evil_gallery,
        "marker": marker,
        "sketch": str(sketch),
    }


# --------------------------------------------------------------------------------------------------
# our own checkpoints load weights-only


@pytest.mark.parametrize("method", ["zs_sbir", "quantization"])
def test_our_checkpoints_load_weights_only(runs, method):
    files = sorted(glob.glob(str(Path(runs["zs" if method == "zs_sbir" else "quant"]).parent / "*.ckpt")))
    assert {Path(f).name for f in files} >= {"last.ckpt", "last.prev.ckpt"}
    mid_epoch = 0
    for f in files:
        ckpt = torch.load(f, map_location="cpu", weights_only=True)  # raises on anything else
        assert ckpt["sketchquant"]["model"]["name"] == method
        assert ckpt["callbacks"]["ExactResume"]["ranks"], f  # the exact-resume state is in it
        mid_epoch += not ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]
    assert mid_epoch >= 1  # a checkpoint written inside the epoch (sampler position, running sums)


# --------------------------------------------------------------------------------------------------
# a checkpoint that would run code


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _commands(runs) -> dict[str, list[str]]:
    tmp = runs["tmp"]
    data = [f"data.root={runs['data'] / 'glyphs'}", f"run_dir={tmp / 'runs'}"]
    return {
        "evaluate": ["evaluate", "--ckpt", str(runs["evil"]), *data],
        "encode": ["encode", "--ckpt", str(runs["evil_quant"]), "--out", str(tmp / "codes.npz")]
        + [f"data.root={runs['quant_data'] / 'scenes'}"],
        "index": [
            "index",
            "--ckpt",
            str(runs["evil"]),
            "--images",
            str(runs["photos"]),
            "--out",
            str(tmp / "g"),
        ],
        "search": ["search", "--gallery", str(runs["evil_gallery"]), runs["sketch"]],
        "search --ckpt --force": ["search", "--gallery", str(runs["gallery"]), runs["sketch"], "--force"]
        + ["--ckpt", str(runs["evil"])],
        "serve": ["serve", "--gallery", str(runs["evil_gallery"]), "--port", str(_port())],
        "train resume=PATH": ["train", "zs_sbir", *conftest.tiny_overrides("zs_sbir", tmp)]
        + [f"resume={runs['evil']}"],
    }


@pytest.mark.parametrize(
    "command",
    ["evaluate", "encode", "index", "search", "search --ckpt --force", "serve", "train resume=PATH"],
)
def test_code_running_checkpoint_is_refused_by_every_command(runs, command, capsys, monkeypatch):
    import uvicorn

    from sketchquant.app.cli import main

    def never(*args, **kwargs):  # a regression must fail the test, not serve forever
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", never)
    capsys.readouterr()
    code = main(_commands(runs)[command])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert str(runs["evil"] if command != "encode" else runs["evil_quant"]) in lines[0]
    assert "needs arbitrary unpickling (it refers to exec" in lines[0]
    assert not runs["marker"].exists()
    assert not (runs["tmp"] / "g").exists()  # the refused index left no folder behind


def test_without_force_another_checkpoint_is_refused_before_it_is_read(runs, capsys):
    from sketchquant.app.cli import main

    assert (
        main(["search", "--gallery", str(runs["gallery"]), runs["sketch"], "--ckpt", str(runs["evil"])]) == 2
    )
    assert "is not the one gallery" in capsys.readouterr().err
    assert not runs["marker"].exists()


def test_trust_checkpoint_loads_it_the_old_way(runs, tmp_path, capsys):
    """``--trust-checkpoint``: the file is unpickled in full (so its code runs) and the command works."""
    from sketchquant.app.cli import main

    marker = tmp_path / "trusted-marker"
    evil = _evil(runs["zs"], tmp_path / "trusted.ckpt", marker)
    out = tmp_path / "g"
    assert main(["index", "--ckpt", str(evil), "--images", str(runs["photos"]), "--out", str(out)]) == 2
    assert not marker.exists()
    args = ["index", "--ckpt", str(evil), "--images", str(runs["photos"]), "--out", str(out)]
    assert main([*args, "--trust-checkpoint"]) == 0 and marker.exists()
    marker.unlink()
    assert main(["search", "--gallery", str(out), runs["sketch"], "--json"]) == 2
    assert not marker.exists()
    capsys.readouterr()
    assert main(["search", "--gallery", str(out), runs["sketch"], "--json", "--trust-checkpoint"]) == 0
    assert marker.exists() and len(json.loads(capsys.readouterr().out)["queries"][0]["hits"]) == 10


# --------------------------------------------------------------------------------------------------
# a gallery's checkpoint replaced, other checkpoints


def test_replaced_checkpoint_of_the_same_size_and_mtime_is_refused(runs, tmp_path, capsys):
    from sketchquant.app.cli import main
    from sketchquant.app.gallery import Gallery, GalleryError, build_gallery

    raw = torch.load(runs["zs"], map_location="cpu", weights_only=True)
    ckpt = tmp_path / "model.ckpt"
    torch.save(raw, ckpt)
    out = tmp_path / "g"
    build_gallery(ckpt, runs["photos"], out, quiet=True)
    st = ckpt.stat()
    key = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
    raw["state_dict"][key] = raw["state_dict"][key] + 0.5  # another model, written the same way
    torch.save(raw, ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (ckpt.stat().st_size, ckpt.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(GalleryError, match=r"is not the one gallery .* was built with .*--force"):
        Gallery.open(out)
    assert main(["search", "--gallery", str(out), runs["sketch"]]) == 2
    assert "is not the one gallery" in capsys.readouterr().err


def test_other_checkpoint_refused_unless_forced(runs, tmp_path, capsys):
    from sketchquant.app.gallery import Gallery, GalleryError

    raw = torch.load(runs["zs"], map_location="cpu", weights_only=True)
    key = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
    raw["state_dict"][key] = raw["state_dict"][key] + 0.01
    other = tmp_path / "other.ckpt"
    torch.save(raw, other)
    with pytest.raises(GalleryError, match="is not the one gallery .* was built with.*--force"):
        Gallery.open(runs["gallery"], other)
    g = Gallery.open(runs["gallery"], other, force=True)
    assert "searching anyway" in capsys.readouterr().err
    assert len(g.search(runs["sketch"], k=3)[0].hits) == 3
    assert Gallery.open(runs["gallery"], runs["zs"]).method == "zs_sbir"  # its own: fine


def test_method_a_gallery_with_method_b_checkpoint(runs, tmp_path):
    from sketchquant.app.gallery import Gallery, GalleryError, build_gallery

    out = tmp_path / "gallery-a"
    build_gallery(runs["quant"], runs["photos"], out, quiet=True)
    with pytest.raises(GalleryError, match="holds a 'quantization' model's features, but .* 'zs_sbir' model"):
        Gallery.open(out, runs["zs"], force=True)


# --------------------------------------------------------------------------------------------------
# no teacher at inference


def test_inference_builds_no_teacher(runs, tmp_path, capfd, monkeypatch):
    """index, search, serve and evaluate: no distillation teacher built, no warning about one."""
    import warnings

    from sketchquant.app.cli import main
    from sketchquant.app.gallery import build_gallery
    from sketchquant.app.serve import serve
    from sketchquant.app.train import evaluate
    from sketchquant.lightning_modules.components.sketch_net import SketchNet

    built = []
    real = SketchNet.make_teacher
    monkeypatch.setattr(SketchNet, "make_teacher", lambda self: built.append(1) or real(self))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_gallery(runs["zs"], runs["photos"], tmp_path / "g", quiet=True)
        assert main(["search", "--gallery", str(tmp_path / "g"), runs["sketch"]]) == 0
        srv = serve(tmp_path / "g", port=_port(), block=False)
        srv.close()
        data = [f"data.root={runs['data'] / 'glyphs'}", f"run_dir={tmp_path / 'runs'}"]
        evaluate(runs["zs"], data)
    out = capfd.readouterr()
    assert built == []
    text = out.out + out.err + "\n".join(str(w.message) for w in caught)
    assert "distillation is meaningless" not in text and "NO ImageNet weights" not in text
