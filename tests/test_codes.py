"""Method A export path: encode → index → search on a tiny trained model (one training run per module)."""

from __future__ import annotations

import json
import os

import conftest
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore")

NUM_CLASSES = 6
N_DB, N_QUERY, N_TRAIN = 48, 12, 48
WINDOWS, DIM = 4, 8  # test_resnet at 32 px, feature_stage -2: 2×2 map, 1×1 windows, stride 1 -> P = 4


def tiny_overrides(tmp) -> list[str]:
    return conftest.tiny_overrides(
        "quantization",
        tmp,
        **{
            "model.optim.lr": 0.01,
            "model.alpha.t1": 1,
            "model.alpha.t2": 2,
            "data.generator.num_classes": NUM_CLASSES,
            "data.generator.num_train": N_TRAIN,
            "data.generator.num_query": N_QUERY,
            "data.generator.num_database": N_DB,
            "model.dim": DIM,
            "trainer.max_epochs": 2,
            "trainer.limit_train_batches": 1.0,
            "trainer.log_every_n_steps": 1,
            "trainer.enable_progress_bar": "false",
        },
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    from sketchquant.app.methods import compose
    from sketchquant.app.train import train

    tmp = tmp_path_factory.mktemp("codes")
    out = train(compose("quantization", tiny_overrides(tmp)))
    ckpt = os.path.join(out["run_dir"], "checkpoints", "last.ckpt")
    assert os.path.isfile(ckpt)
    return {"tmp": tmp, "ckpt": ckpt, "root": tmp / "scenes"}


@pytest.fixture(scope="module")
def db_codes(trained):
    from sketchquant.app.export import encode

    info = encode(trained["ckpt"], trained["tmp"] / "db.npz", split="database")
    return info


def _csv_paths(root, split):
    return [
        str(root / line.split(",")[0]) for line in (root / f"{split}.csv").read_text().splitlines() if line
    ]


def test_encode_database_writes_uint8_codes(trained, db_codes, capsys):
    z = np.load(db_codes["path"], allow_pickle=False)
    codes = z["codes"]
    assert codes.dtype == np.uint8 and codes.shape == (N_DB, WINDOWS * DIM)
    assert int(z["bits"]) == 8 and int(z["num_windows"]) == WINDOWS and int(z["dim"]) == DIM
    assert 0 <= codes.min() and codes.max() <= 255
    assert codes.max() > 0, "a trained model should give some non-zero codes"
    assert z["labels"].shape == (N_DB, NUM_CLASSES) and z["labels"].dtype == np.uint8
    assert set(np.unique(z["labels"])) <= {0, 1} and (z["labels"].sum(1) >= 1).all()
    assert list(z["paths"]) == _csv_paths(trained["root"], "database")
    assert len(z["class_names"]) == NUM_CLASSES and str(z["class_names"][0]).startswith("glyph_")
    assert str(z["checkpoint"]) == str(os.path.realpath(trained["ckpt"]))
    assert db_codes["bytes_per_image"] == WINDOWS * DIM and db_codes["total_bytes"] == N_DB * WINDOWS * DIM
    assert not [p for p in os.listdir(trained["tmp"]) if p.endswith(".tmp")]


def test_encode_other_splits_and_suffix(trained, capsys):
    from sketchquant.app.export import encode

    q = encode(trained["ckpt"], trained["tmp"] / "query_codes", split="query")  # no suffix: .npz appended
    assert q["path"].endswith("query_codes.npz") and q["n"] == N_QUERY
    assert "encoded 12 query images" in capsys.readouterr().out
    t = encode(trained["ckpt"], trained["tmp"] / "train.npz", split="train")
    z = np.load(t["path"])
    # "train" is what the model trained on: the train list minus the part held out for validation
    from sketchquant.app.build import build_datamodule
    from sketchquant.app.checkpoints import load_checkpoint_config

    dm = build_datamodule(load_checkpoint_config(trained["ckpt"])[0])
    dm.setup("fit")
    fit = list(dm.datasets["train"].paths)
    assert len(fit) < N_TRAIN and set(fit) < set(_csv_paths(trained["root"], "train"))
    assert z["codes"].shape == (len(fit), WINDOWS * DIM)
    assert list(z["paths"]) == fit
    # train split is encoded with the eval transform: deterministic
    t2 = encode(trained["ckpt"], trained["tmp"] / "train2.npz", split="train")
    np.testing.assert_array_equal(z["codes"], np.load(t2["path"])["codes"])
    with pytest.raises(ValueError, match="split must be one of"):
        encode(trained["ckpt"], trained["tmp"] / "x.npz", split="gallery")


def test_encode_fewer_bits_stays_in_range(trained, db_codes):
    from sketchquant.app.export import encode

    # bits only changes the iReLU clamp, so the same weights give 4-bit codes
    info = encode(trained["ckpt"], trained["tmp"] / "db4.npz", overrides=["model.bits=4"])
    z = np.load(info["path"])
    assert int(z["bits"]) == 4 and z["codes"].max() <= 15
    full = np.load(db_codes["path"])["codes"]
    np.testing.assert_array_equal(z["codes"], np.minimum(full, 15))


def test_bits_9_refused(trained):
    from sketchquant.app.build import build_module
    from sketchquant.app.export import encode
    from sketchquant.app.methods import compose

    out = trained["tmp"] / "bits9.npz"
    with pytest.raises(ValueError, match="bits must be an int in 1..8"):
        encode(trained["ckpt"], out, overrides=["model.bits=9"])
    assert not out.exists()
    cfg = compose("quantization", tiny_overrides(trained["tmp"]) + ["model.bits=9"])

    class DM:
        num_classes, multi_label, image_size = NUM_CLASSES, True, 32

    with pytest.raises(ValueError, match="bits must be an int in 1..8"):
        build_module(cfg, DM())


def test_index_and_search_finds_the_image_itself(trained, db_codes, capsys):
    from sketchquant.app.export import build_index, search

    index_path = trained["tmp"] / "db.faiss"
    meta = build_index(db_codes["path"], index_path)
    assert meta["dimension"] == WINDOWS * DIM and meta["ntotal"] == N_DB and meta["bits"] == 8
    side = json.loads((trained["tmp"] / "db.faiss.json").read_text())
    assert (
        side["paths"] == _csv_paths(trained["root"], "database") and len(side["class_names"]) == NUM_CLASSES
    )
    z = np.load(db_codes["path"])
    codes = z["codes"]
    # a database image whose code no other image shares: it must come back first at distance 0
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    unique_rows = np.flatnonzero(counts[inverse.ravel()] == 1)
    assert len(unique_rows) >= 1, "no database image has a code of its own"
    i = int(unique_rows[0])
    img = str(z["paths"][i])
    capsys.readouterr()
    res = search(trained["ckpt"], index_path, [img], k=5)
    assert len(res) == 1 and res[0]["query"] == img
    top = res[0]["results"]
    assert len(top) == 5 and top[0]["path"] == img and top[0]["distance"] == 0.0 and top[0]["index"] == i
    assert top[1]["distance"] > 0
    assert [r["rank"] for r in top] == [1, 2, 3, 4, 5]
    assert all(a["distance"] <= b["distance"] for a, b in zip(top, top[1:]))
    # distances are squared L2 between the integer codes
    expect = ((codes.astype(np.int64) - codes[i].astype(np.int64)) ** 2).sum(1)
    assert [r["distance"] for r in top] == sorted(expect.tolist())[:5]
    assert top[0]["labels"] and all(name.startswith("glyph_") for name in top[0]["labels"])
    printed = capsys.readouterr().out
    assert img in printed and "0.0" in printed
    # k larger than the database: everything, once
    res = search(trained["ckpt"], index_path, [img, img], k=1000, quiet=True)
    assert len(res) == 2 and len(res[1]["results"]) == N_DB


def test_index_overwrite_is_atomic_and_checks_codes(trained, db_codes, tmp_path):
    from sketchquant.app.export import build_index

    out = tmp_path / "ix.faiss"
    build_index(db_codes["path"], out)
    build_index(db_codes["path"], out)  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix.faiss", "ix.faiss.json"]
    bad = tmp_path / "float.npz"
    np.savez(bad, codes=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"float\.npz.*'codes' must be uint8"):
        build_index(bad, tmp_path / "bad.faiss")
    flat = tmp_path / "flat.npz"
    np.savez(flat, codes=np.zeros(7, np.uint8))
    with pytest.raises(ValueError, match=r"flat\.npz.*'codes' must be 2-D"):
        build_index(flat, tmp_path / "bad.faiss")
    nocodes = tmp_path / "none.npz"
    np.savez(nocodes, feats=np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match=r"none\.npz has no 'codes' field"):
        build_index(nocodes, tmp_path / "bad.faiss")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        build_index(tmp_path / "missing.npz", tmp_path / "bad.faiss")
    assert not (tmp_path / "bad.faiss").exists()


def test_codes_of_another_dimension_refused(trained, tmp_path):
    from sketchquant.app.export import build_index, search

    other = tmp_path / "other.npz"
    np.savez(other, codes=np.random.default_rng(0).integers(0, 255, (10, 5), dtype=np.uint8))
    build_index(other, tmp_path / "other.faiss")
    img = _csv_paths(trained["root"], "query")[0]
    with pytest.raises(ValueError, match=r"dimension 5 but the model produces 32"):
        search(trained["ckpt"], tmp_path / "other.faiss", [img])


def test_method_b_checkpoint_refused(trained, tmp_path):
    from sketchquant.app.export import encode, search
    from sketchquant.app.methods import compose
    from sketchquant.core.config import ConfigError, to_container

    ckpt = tmp_path / "zs.ckpt"
    torch.save({"sketchquant": to_container(compose("zs_sbir")), "state_dict": {}}, ckpt)
    out = tmp_path / "codes.npz"
    with pytest.raises(ConfigError, match="is a 'zs_sbir' model, but this command needs a 'quantization'"):
        encode(ckpt, out)
    assert not out.exists()
    with pytest.raises(ConfigError, match="'zs_sbir' model"):
        search(ckpt, tmp_path / "whatever.faiss", [_csv_paths(trained["root"], "query")[0]])


def test_unreadable_query_image_named_before_anything_runs(trained, tmp_path):
    from sketchquant.app.export import search

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    before = sorted(os.listdir(tmp_path))
    # even the missing checkpoint/index are not looked at: the image is checked first
    with pytest.raises(ValueError, match="cannot read query image .*broken.png"):
        search(tmp_path / "no.ckpt", tmp_path / "no.faiss", [_csv_paths(trained["root"], "query")[0], bad])
    with pytest.raises(FileNotFoundError, match="query image .*ghost.png does not exist"):
        search(trained["ckpt"], tmp_path / "no.faiss", [tmp_path / "ghost.png"])
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_round_trip(trained, tmp_path, capsys):
    from sketchquant.app.cli import main

    npz, ix = tmp_path / "q.npz", tmp_path / "q.faiss"
    assert main(["encode", "--ckpt", trained["ckpt"], "--out", str(npz), "--split", "query"]) == 0
    assert main(["index", str(npz), "--out", str(ix)]) == 0
    img = _csv_paths(trained["root"], "query")[3]
    capsys.readouterr()
    assert main(["search", "--ckpt", trained["ckpt"], "--index", str(ix), img, "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"query {img}") and len(lines) == 4
    bad = tmp_path / "b.png"
    bad.write_text("x")
    assert main(["search", "--ckpt", trained["ckpt"], "--index", str(ix), str(bad)]) == 2
    assert "cannot read query image" in capsys.readouterr().err
