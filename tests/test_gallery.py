"""Galleries (sketchquant.app.gallery): search equals evaluate's ranking for both methods, --update equals a
rebuild, a killed build leaves the old gallery, and the bad inputs of issue 13. One tiny training run per
method for the whole module."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch
from test_checkpoint_safety import tiny_run

pytestmark = pytest.mark.filterwarnings("ignore")


def _train(experiment: str, tmp: Path, **extra) -> str:
    from sketchquant.app.methods import compose
    from sketchquant.app.train import train

    values = {"trainer.enable_progress_bar": "false", **extra}
    out = train(compose(experiment, conftest.tiny_overrides(experiment, tmp, **values)))
    ckpt = os.path.join(out["run_dir"], "checkpoints", "last.ckpt")
    assert os.path.isfile(ckpt)
    return ckpt


def _test_split(ckpt: str):
    """The evaluator's queries and gallery: paths and labels in its order."""
    from sketchquant.app.build import build_datamodule
    from sketchquant.app.checkpoints import load_checkpoint_config
    from sketchquant.core.batch import GALLERY, QUERY

    cfg, _ = load_checkpoint_config(ckpt)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    ds = dm.datasets[dm.test_name]
    q, g = ds.positions(QUERY), ds.positions(GALLERY)
    labels = ds.labels_tensor()
    return cfg, [ds.paths[i] for i in q], labels[q], [ds.paths[i] for i in g], labels[g]


@pytest.fixture(scope="module")
def zs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gallery_zs")
    _, ckpt = tiny_run(tmp_path_factory, "zs_sbir")
    cfg, qpaths, ql, gpaths, gl = _test_split(ckpt)
    lst = tmp / "photos.txt"
    lst.write_text("".join(p + "\n" for p in gpaths))
    return {"tmp": tmp, "ckpt": ckpt, "queries": qpaths, "ql": ql, "list": lst, "gpaths": gpaths, "gl": gl}


@pytest.fixture(scope="module")
def quant(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gallery_quant")
    ckpt = _train(
        "quantization",
        tmp,
        **{"model.optim.lr": 0.01, "data.generator.num_database": 40, "data.generator.num_query": 10},
    )
    cfg, qpaths, ql, gpaths, gl = _test_split(ckpt)
    lst = tmp / "database.txt"
    lst.write_text("".join(p + "\n" for p in gpaths))
    return {"tmp": tmp, "ckpt": ckpt, "queries": qpaths, "ql": ql, "list": lst, "gpaths": gpaths, "gl": gl}


@pytest.fixture(scope="module")
def zs_gallery(zs):
    from sketchquant.app.gallery import build_gallery

    out = zs["tmp"] / "gallery"
    build_gallery(zs["ckpt"], zs["list"], out, quiet=True)
    return out


def _rank_matrix(results, n_gallery: int) -> torch.Tensor:
    """The search order as a distance matrix (the rank of each gallery item), for the metric functions."""
    d = torch.full((len(results), n_gallery), float(n_gallery + 1))
    for qi, r in enumerate(results):
        assert len(r.hits) == n_gallery
        for h in r.hits:
            d[qi, h.index] = float(h.rank)
    return d


def _metrics_of_search(results, ql, gl, cfg, protocol: str):
    from sketchquant.core.retrieval.metrics import hashing_metrics, sbir_metrics

    d = _rank_matrix(results, len(gl))
    fn = sbir_metrics if protocol == "sbir" else hashing_metrics
    dummy_q, dummy_g = torch.zeros(len(ql), 1), torch.zeros(len(gl), 1)
    return fn(
        dummy_q,
        ql,
        dummy_g,
        gl,
        map_at=tuple(cfg.eval.map_at),
        p_at=tuple(cfg.eval.p_at),
        distance_fn=lambda idx: d[idx],
    )


# --------------------------------------------------------------------------------------------------
# search equals evaluate


@pytest.mark.parametrize(
    "overrides",
    [["eval.fusion=feature"], ["eval.fusion=distance"], ["eval.pq_max_points_per_centroid=2"]],
    ids=["feature-fusion", "distance-fusion", "sampled-kmeans"],
)
def test_search_equals_evaluate_method_b(zs, overrides):
    from sketchquant.app.gallery import Gallery, build_gallery
    from sketchquant.app.train import evaluate

    out = zs["tmp"] / f"gallery-{overrides[0].replace('=', '-')}"
    build_gallery(zs["ckpt"], zs["list"], out, overrides=overrides, quiet=True)
    g = Gallery.open(out)
    assert len(g) == len(zs["gpaths"]) and g.features == ["raw", "proto", "fused"]
    assert [str(g.image_path(i)) for i in range(len(g))] == zs["gpaths"]
    ev = evaluate(zs["ckpt"], overrides)["test"]
    for feats, prefix in (("raw", "test/"), ("proto", "test/proto/"), ("fused", "test/fused/")):
        res = g.search(zs["queries"], k=10_000, features=feats)
        got = _metrics_of_search(res, zs["ql"], zs["gl"], g.cfg, "sbir")
        for name in ("map_all", "map_200", "p_100", "p_200"):
            assert got[name] == pytest.approx(ev[prefix + name], rel=1e-6, abs=1e-7), (feats, name)
        # ascending distances, ties in gallery order
        for r in res:
            keys = [(h.distance, h.index) for h in r.hits]
            assert keys == sorted(keys)


def test_search_equals_evaluate_method_a_codes(quant):
    from sketchquant.app.gallery import Gallery, build_gallery
    from sketchquant.app.train import evaluate

    out = quant["tmp"] / "gallery"
    build_gallery(quant["ckpt"], quant["list"], out, quiet=True)
    g = Gallery.open(out)
    assert g.features == ["codes"] and g.method == "quantization"
    ev = evaluate(quant["ckpt"])["test"]
    res = g.search(quant["queries"], k=10_000)
    got = _metrics_of_search(res, quant["ql"], quant["gl"], g.cfg, "hashing")
    keys = [k for k in ev if k.startswith("test/codes/map_") or k.startswith("test/codes/p_")]
    assert keys
    for key in keys:
        assert got[key.split("/")[-1]] == pytest.approx(ev[key], rel=1e-6, abs=1e-7), key
    # the distances are squared L2 between the uint8 codes
    q = g.encode(quant["queries"][:1])
    codes = g.stored["codes"].astype(np.int64)
    expect = ((codes - q[0].astype(np.int64)) ** 2).sum(1)
    assert [h.distance for h in res[0].hits] == sorted(expect.tolist())


def test_query_kinds_and_k_larger_than_gallery(zs, zs_gallery):
    from PIL import Image

    from sketchquant.app.gallery import Gallery, GalleryError

    g = Gallery.open(zs_gallery)
    path = zs["queries"][0]
    by_path = g.search(path, k=5)[0]
    pil = Image.open(path)
    by_pil = g.search([pil], k=5)[0]
    by_arr = g.search([np.asarray(pil.convert("RGB"))], k=5)[0]
    assert [h.index for h in by_path.hits] == [h.index for h in by_pil.hits] == [h.index for h in by_arr.hits]
    assert len(by_path.hits) == 5 and by_path.features == "fused"
    everything = g.search([path], k=10_000)[0].hits
    assert len(everything) == len(g) and sorted(h.index for h in everything) == list(range(len(g)))
    assert all(h.label is None for h in everything)  # a flat list file has no class folders
    with pytest.raises(GalleryError, match="k must be a positive integer"):
        g.search([path], k=0)
    with pytest.raises(GalleryError, match="not 'codes'"):
        g.search([path], features="codes")


def test_manifest_contents(zs, zs_gallery):
    from sketchquant.app.gallery import FORMAT_VERSION, sha256_file

    m = json.loads((zs_gallery / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION and m["method"] == "zs_sbir"
    assert m["checkpoint"]["sha256"] == sha256_file(zs["ckpt"])
    assert m["checkpoint"]["path"] == str(Path(zs["ckpt"]).resolve())
    assert m["config"]["model"]["name"] == "zs_sbir" and m["dims"] == {"raw": 32}
    items = m["items"]
    assert len(items["relpaths"]) == len(items["sizes"]) == len(items["mtimes_ns"]) == len(zs["gpaths"])
    assert items["sizes"][0] == os.path.getsize(zs["gpaths"][0])
    assert sorted(os.listdir(zs_gallery)) == sorted(["build.lock", "manifest.json", m["data_dir"]])
    assert sorted(os.listdir(zs_gallery / m["data_dir"])) == [
        "features.npz",
        "fused.faiss",
        "proto.faiss",
        "raw.faiss",
    ]


# --------------------------------------------------------------------------------------------------
# folders, --update, killed builds


def _photo_folder(zs, dest: Path, per_class: int = 4) -> Path:
    """A class-folder copy of some unseen-class photos."""
    dest.mkdir(parents=True, exist_ok=True)
    for p, lab in zip(zs["gpaths"], zs["gl"].tolist()):
        d = dest / f"class{lab}"
        d.mkdir(exist_ok=True)
        if len(list(d.iterdir())) < per_class:
            shutil.copy2(p, d / Path(p).name)
    return dest


def test_folder_labels_and_update_equals_rebuild(zs, tmp_path):
    from sketchquant.app.gallery import Gallery, build_gallery

    photos = _photo_folder(zs, tmp_path / "photos")
    out = tmp_path / "g"
    first = build_gallery(zs["ckpt"], photos, out, quiet=True)
    assert first.encoded == first.images == len(list(photos.rglob("*.png")))
    g = Gallery.open(out)
    assert {h.label for h in g.search(zs["queries"][0], k=100)[0].hits} == {d.name for d in photos.iterdir()}
    # change the folder: one file added, one deleted, one rewritten (new content, new mtime)
    classes = sorted(d for d in photos.iterdir())
    extra = [p for p in zs["gpaths"] if Path(p).name not in {q.name for q in classes[0].iterdir()}][0]
    shutil.copy2(extra, classes[0] / "added.png")
    deleted = sorted(classes[1].iterdir())[0]
    deleted.unlink()
    changed = sorted(classes[2].iterdir())[0]
    shutil.copy2(zs["gpaths"][-1], changed)
    os.utime(changed, ns=(1, 1))
    first_data = json.loads((out / "manifest.json").read_text())["data_dir"]
    upd = build_gallery(zs["ckpt"], photos, out, update=True, quiet=True)
    assert upd.encoded == 2 and upd.reused == first.images - 2 and upd.images == first.images
    full = build_gallery(zs["ckpt"], photos, tmp_path / "full", quiet=True)
    assert full.encoded == full.images
    a, b = Gallery.open(out), Gallery.open(tmp_path / "full")
    assert a.manifest["items"] == b.manifest["items"]
    np.testing.assert_allclose(a.stored["raw"], b.stored["raw"], atol=1e-5)
    np.testing.assert_allclose(a.stored["pq_centroids"], b.stored["pq_centroids"], atol=1e-4)
    for feats in ("raw", "proto", "fused"):
        ra = a.search(zs["queries"][:4], k=1000, features=feats)
        rb = b.search(zs["queries"][:4], k=1000, features=feats)
        assert [[h.relpath for h in r.hits] for r in ra] == [[h.relpath for h in r.hits] for r in rb]
    # the generation it replaced stays (a running server may still be opening it), older ones go
    now = json.loads((out / "manifest.json").read_text())["data_dir"]
    assert sorted(p.name for p in out.glob("data-*")) == sorted([first_data, now])
    build_gallery(zs["ckpt"], photos, out, update=True, quiet=True)
    newest = json.loads((out / "manifest.json").read_text())["data_dir"]
    assert sorted(p.name for p in out.glob("data-*")) == sorted([now, newest])


def test_killed_build_leaves_the_old_gallery(zs, tmp_path, monkeypatch):
    import sketchquant.app.gallery.build as factory  # where build_gallery looks make_index up
    from sketchquant.app.gallery import Gallery, build_gallery

    photos = _photo_folder(zs, tmp_path / "photos", per_class=3)
    out = tmp_path / "g"
    build_gallery(zs["ckpt"], photos, out, quiet=True)
    before = (out / "manifest.json").read_text()
    hits = [h.relpath for h in Gallery.open(out).search(zs["queries"][0], k=5)[0].hits]
    shutil.copy2(zs["gpaths"][0], photos / "new.png")
    calls = {"n": 0}
    real = factory.make_index

    def dying(*args, **kwargs):  # killed while writing the second index
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(factory, "make_index", dying)
    with pytest.raises(KeyboardInterrupt):
        build_gallery(zs["ckpt"], photos, out, quiet=True)
    monkeypatch.undo()
    assert (out / "manifest.json").read_text() == before
    assert len(list(out.glob("data-*"))) == 1
    assert [h.relpath for h in Gallery.open(out).search(zs["queries"][0], k=5)[0].hits] == hits
    # a build killed hard (SIGKILL) leaves its half data folder: the next build removes it (and keeps
    # the generation it replaces)
    (out / "data-20000101-000000-1-000000").mkdir()
    old_dir = json.loads(before)["data_dir"]
    build_gallery(zs["ckpt"], photos, out, update=True, quiet=True)
    new_dir = json.loads((out / "manifest.json").read_text())["data_dir"]
    assert sorted(p.name for p in out.glob("data-*")) == sorted([old_dir, new_dir])
    assert len(Gallery.open(out)) == len(list(photos.rglob("*.png")))


# --------------------------------------------------------------------------------------------------
# bad input


def test_bad_files_skipped_with_names_or_error(zs, tmp_path, capsys):
    from sketchquant.app.gallery import BadGalleryImageWarning, GalleryError, build_gallery

    photos = _photo_folder(zs, tmp_path / "photos", per_class=2)
    good = len(list(photos.rglob("*.png")))
    (photos / "notes.jpg").write_text("not an image")
    data = Path(zs["gpaths"][0]).read_bytes()
    (photos / "cut.png").write_bytes(data[: len(data) // 2])
    (photos / "readme.txt").write_text("ignored: not an image extension")
    with pytest.warns(
        BadGalleryImageWarning, match=r"2 of \d+ image files are unreadable.*cut\.png.*notes\.jpg"
    ):
        rep = build_gallery(zs["ckpt"], photos, tmp_path / "g", quiet=True)
    assert rep.images == good and len(rep.skipped) == 2
    assert "skipped 2 unreadable image file(s)" in capsys.readouterr().err
    out = tmp_path / "g2"
    with pytest.raises(GalleryError, match=r"2 of .* unreadable.*--on-bad-image error"):
        build_gallery(zs["ckpt"], photos, out, on_bad_image="error", quiet=True)
    assert not out.exists()  # the failed first build removes the folder it created


def test_empty_folder_and_missing_images(zs, tmp_path):
    from sketchquant.app.gallery import GalleryError, build_gallery

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(GalleryError, match="no images .* under"):
        build_gallery(zs["ckpt"], tmp_path / "empty", tmp_path / "g", quiet=True)
    with pytest.raises(FileNotFoundError, match="neither a folder nor a list file"):
        build_gallery(zs["ckpt"], tmp_path / "nowhere", tmp_path / "g", quiet=True)
    assert not (tmp_path / "g").exists()


def test_older_format_and_legacy_index(zs, zs_gallery, tmp_path):
    from sketchquant.app.gallery import Gallery, GalleryError

    old = tmp_path / "old"
    shutil.copytree(zs_gallery, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 0
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(
        GalleryError, match=r"older sketchquant \(format version 0; this one reads 1\).*rebuild"
    ):
        Gallery.open(old)
    legacy = tmp_path / "db.faiss"
    legacy.write_bytes(b"x")
    Path(str(legacy) + ".json").write_text("{}")
    with pytest.raises(GalleryError, match="format 0.*search --index"):
        Gallery.open(legacy)
    with pytest.raises(FileNotFoundError, match="is not a gallery"):
        Gallery.open(tmp_path)


# --------------------------------------------------------------------------------------------------
# index types


def test_index_types_on_synthetic_features():
    from sketchquant.core.retrieval.factory import index_bytes, is_exact, make_index
    from sketchquant.core.retrieval.index import search_index

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    q = x[:50] + 0.01 * rng.standard_normal((50, 32)).astype(np.float32)
    flat = make_index("flat", x)
    _, truth = search_index(flat, q, 10)
    assert is_exact(flat)
    for kind in ("ivfpq", "hnsw", "IVF16,Flat"):
        idx = make_index(kind, x)
        assert not is_exact(idx)
        _, got = search_index(idx, q, 10)
        recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
        assert recall > 0.5, (kind, recall)
        assert index_bytes(idx) > 0
    with pytest.raises(ValueError, match="ivfpq needs at least 256"):
        make_index("ivfpq", x[:100])
    with pytest.raises(ValueError, match="neither one of flat, ivfpq, hnsw nor a faiss index_factory"):
        make_index("NoSuchIndex", x)
    codes = make_index("flat", rng.integers(0, 255, (10, 8)).astype(np.uint8), codes=True)
    assert is_exact(codes)


def test_hnsw_gallery(zs, tmp_path):
    from sketchquant.app.gallery import Gallery, build_gallery

    out = tmp_path / "g"
    build_gallery(zs["ckpt"], zs["list"], out, index_type="hnsw", quiet=True)
    g = Gallery.open(out)
    assert g.manifest["index_type"] == "hnsw"
    hits = g.search(zs["queries"][0], k=5, features="raw")[0].hits
    assert len(hits) == 5


# --------------------------------------------------------------------------------------------------
# command line


def test_cli_index_search_json_sheet(zs, zs_gallery, tmp_path, capsys):
    from sketchquant.app.cli import main

    photos = _photo_folder(zs, tmp_path / "photos", per_class=2)
    out = tmp_path / "g"
    assert (
        main(["index", "--ckpt", zs["ckpt"], "--images", str(photos), "--out", str(out), "--batch-size", "4"])
        == 0
    )
    assert "gallery" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    q = zs["queries"][:2]
    assert main(["search", "--gallery", str(out), *q, "--k", "3", "--json", "--sheet", str(sheet)]) == 0
    payload = json.loads(capsys.readouterr().out.splitlines()[0])
    assert payload["method"] == "zs_sbir" and len(payload["queries"]) == 2
    assert [len(r["hits"]) for r in payload["queries"]] == [3, 3]
    assert payload["queries"][0]["hits"][0]["label"].startswith("class")
    from PIL import Image

    assert Image.open(sheet).size[0] > 3 * 128
    assert main(["search", "--gallery", str(out), q[0], "--k", "2"]) == 0
    assert "rank" in capsys.readouterr().out
    # errors: exit 2 with a message, no traceback
    assert main(["search", "--gallery", str(out), str(tmp_path / "ghost.png")]) == 2
    assert "ghost.png does not exist" in capsys.readouterr().err
    assert main(["index", "--ckpt", zs["ckpt"], "--images", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert main(["search", "--gallery", str(tmp_path), q[0]]) == 2
    assert "is not a gallery" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# sharded extraction


@pytest.mark.slow
def test_two_process_build_equals_one_process(zs, zs_gallery, tmp_path):
    """Trainer.predict over 2 CPU processes (ddp_spawn): the shards merge into the single-process gallery
    (the DistributedSampler's padding dropped)."""
    from sketchquant.app.gallery import Gallery, build_gallery

    out = tmp_path / "g2"
    two = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp_spawn"]
    # 21 photos over 2 processes: one is padded with a repeat
    build_gallery(zs["ckpt"], zs["list"], out, overrides=two, batch_size=4, quiet=True)
    a, b = Gallery.open(out), Gallery.open(zs_gallery)
    assert a.manifest["items"] == b.manifest["items"]
    np.testing.assert_allclose(a.stored["raw"], b.stored["raw"], atol=1e-5)
    for feats in ("raw", "proto", "fused"):
        ra = a.search(zs["queries"], k=1000, features=feats)
        rb = b.search(zs["queries"], k=1000, features=feats)
        assert [[h.index for h in r.hits] for r in ra] == [[h.index for h in r.hits] for r in rb]
    assert not (out / a.manifest["data_dir"] / "shards").exists()


@pytest.mark.slow
def test_cli_ddp_relaunch_build(zs, zs_gallery, tmp_path):
    """``trainer.strategy=ddp`` re-launches the command line for rank 1; both write into one data folder."""
    import subprocess
    import sys

    from sketchquant.app.gallery import Gallery

    out = tmp_path / "g"
    cmd = [
        sys.executable,
        "-m",
        "sketchquant.app.cli",
        "index",
        "--ckpt",
        zs["ckpt"],
        "--images",
        str(zs["list"]),
    ]
    cmd += ["--out", str(out), "--batch-size", "4", "trainer.accelerator=cpu", "trainer.devices=2"]
    cmd += ["trainer.strategy=ddp"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("SKETCHQUANT_GALLERY_BUILD", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = Gallery.open(out), Gallery.open(zs_gallery)
    assert a.manifest["items"] == b.manifest["items"]
    np.testing.assert_allclose(a.stored["raw"], b.stored["raw"], atol=1e-5)
    assert len(list(out.glob("data-*"))) == 1


@pytest.mark.slow
def test_sigkilled_build_leaves_the_old_gallery(zs, tmp_path):
    """A real kill (SIGKILL, no clean-up code runs) while a rebuild is under way: the old gallery opens and
    answers as before; the next build removes the half-written data folder."""
    import signal
    import subprocess
    import sys

    from sketchquant.app.gallery import Gallery, build_gallery

    photos = _photo_folder(zs, tmp_path / "photos", per_class=3)
    out = tmp_path / "g"
    build_gallery(zs["ckpt"], photos, out, quiet=True)
    before = (out / "manifest.json").read_text()
    old_dir = json.loads(before)["data_dir"]
    hits = [h.relpath for h in Gallery.open(out).search(zs["queries"][0], k=5)[0].hits]
    # The child pauses at the most dangerous moment (the new features and indexes written, the manifest
    # not yet switched), says so with a marker file, and is killed right there: no timing race.
    marker = tmp_path / "paused"
    child = (
        "import sys, time\n"
        "import sketchquant.app.gallery.build as b\n"
        "from sketchquant.app.cli import main\n"
        "def paused(path, obj):\n"
        f"    open({str(marker)!r}, 'w').close()\n"
        "    time.sleep(600)\n"
        "b.atomic_write_json = paused\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    cmd = [sys.executable, "-c", child, "index", "--ckpt", zs["ckpt"], "--images", str(photos)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("SKETCHQUANT_GALLERY_BUILD", None)
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not marker.exists():
            time.sleep(0.05)
        assert marker.exists(), f"the build never reached the manifest switch: {proc.stderr.read()[-2000:]!r}"
        new = [p for p in out.glob("data-*") if p.name != old_dir]
        assert new and (new[0] / "features.npz").exists()  # the new build's data is written
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (out / "manifest.json").read_text() == before
    assert [h.relpath for h in Gallery.open(out).search(zs["queries"][0], k=5)[0].hits] == hits
    build_gallery(zs["ckpt"], photos, out, update=True, quiet=True)
    assert {p.name for p in out.glob("data-*")} == {
        old_dir,
        json.loads((out / "manifest.json").read_text())["data_dir"],
    }


def test_page_search_with_a_method_a_gallery(quant):
    """The page's search function serves method A's galleries too (an uploaded image as the query)."""
    from PIL import Image

    from sketchquant.app.gallery import Gallery, build_gallery
    from sketchquant.app.serve import build_app, search_drawing

    out = quant["tmp"] / "gallery-a"
    if not (out / "manifest.json").exists():
        build_gallery(quant["ckpt"], quant["list"], out, quiet=True)
    g = Gallery.open(out)
    build_app(g)  # builds without launching
    image = np.asarray(Image.open(quant["queries"][0]).convert("RGB"))
    items, msg = search_drawing(g, image, k=3)
    assert len(items) == 3 and msg == f"Top 3 of {len(g)} (codes features)."


def test_trainer_group_choice_becomes_single_keys():
    from sketchquant.app.gallery import GalleryError, expand_trainer_choice

    got = expand_trainer_choice(["trainer=ddp", "trainer.devices=2", "eval.pq_k=4"])
    assert "trainer.strategy=ddp" in got and got[-2:] == ["trainer.devices=2", "eval.pq_k=4"]
    assert not any(k.startswith("trainer.max_epochs") for k in got)  # only the extraction settings
    with pytest.raises(GalleryError, match="trainer=nope: no such choice"):
        expand_trainer_choice(["trainer=nope"])


def test_search_and_serve_from_the_shell_import_no_lightning(zs, zs_gallery):
    """``sketchquant search`` loads the network from the checkpoint directly: no Trainer, no Lightning;
    neither does the server's search path (its gallery and page) after it, in the same interpreter."""
    import subprocess
    import sys

    probe = (
        "import json, sys\n"
        "from sketchquant.app.cli import main\n"
        f"code = main(['search', '--gallery', {str(zs_gallery)!r}, {zs['queries'][0]!r}, '--json'])\n"
        "print(json.dumps({'code': code, 'modules': sorted(m.split('.')[0] for m in sys.modules)}))\n"
        "from sketchquant.app.gallery import LiveGallery\n"
        "from sketchquant.app.serve import build_app\n"
        f"build_app(LiveGallery({str(zs_gallery)!r}))\n"
        "print(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    search, result, served = json.loads(lines[0]), json.loads(lines[-2]), set(json.loads(lines[-1]))
    assert result["code"] == 0 and len(search["queries"][0]["hits"]) == 10
    assert {"torch", "faiss", "timm"} <= set(result["modules"])
    assert not {"pytorch_lightning", "lightning_fabric", "lightning", "gradio"} & set(result["modules"])
    assert {"gradio", "fastapi"} <= served and not {
        "pytorch_lightning",
        "lightning_fabric",
        "lightning",
    } & served
