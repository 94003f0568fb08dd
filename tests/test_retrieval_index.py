"""FAISS indexes: builds, exact code distances, atomic save/load with a metadata sidecar."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

import sketchquant.core.retrieval.index as index_mod
from sketchquant.core.retrieval.index import (
    build_code_index,
    build_float_index,
    load_index,
    save_index,
    search_index,
)


def test_float_index_l2_and_ip():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(50, 8)).astype(np.float32)
    q = rng.normal(size=(4, 8)).astype(np.float32)
    d, i = search_index(build_float_index(g, "l2"), q, 5)
    full = ((q[:, None].astype(np.float64) - g[None]) ** 2).sum(2)
    np.testing.assert_array_equal(i, np.argsort(full, axis=1)[:, :5])
    np.testing.assert_allclose(d, np.sort(full, axis=1)[:, :5], rtol=1e-4)
    s, j = search_index(build_float_index(g, "ip"), q, 3)
    np.testing.assert_array_equal(j, np.argsort(-(q @ g.T), axis=1)[:, :3])
    with pytest.raises(ValueError, match="unknown metric 'cos'"):
        build_float_index(g, "cos")


def test_code_index_distances_are_squared_l2_of_integer_codes():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, size=(40, 16)).astype(np.uint8)
    q = rng.integers(0, 256, size=(3, 16)).astype(np.uint8)
    idx = build_code_index(codes)
    assert isinstance(faiss.downcast_index(idx), faiss.IndexScalarQuantizer)
    assert idx.sa_code_size() == 16  # one byte per dimension, stored as is
    d, i = search_index(idx, q, 40)
    want = ((q[:, None].astype(np.int64) - codes[None].astype(np.int64)) ** 2).sum(2)
    np.testing.assert_array_equal(d, np.take_along_axis(want, i, 1).astype(np.float32))
    np.testing.assert_array_equal(d, np.sort(want, axis=1))
    with pytest.raises(ValueError, match="0..255"):
        build_code_index(np.full((2, 4), 300))


def test_search_ties_lowest_index_first():
    g = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    d, i = search_index(build_float_index(g), np.array([[1, 0]], dtype=np.float32), 5)
    assert i[0].tolist() == [0, 2, 4, 1, 3]


def test_few_queries_on_a_large_flat_index_rank_as_faiss(monkeypatch):
    """The multithreaded torch scan (few queries, large flat L2 index) returns faiss's own answer: the
    same items in the same order, ties lowest index first, distances equal to rounding; a grown index
    gets its norms recomputed."""
    rng = np.random.default_rng(5)
    g = rng.normal(size=(3000, 24)).astype(np.float32)
    g[1000:1010] = g[5]  # ten exact duplicates of item 5: ties decided by the lower index
    q = np.concatenate([g[5:6] + 1e-3, rng.normal(size=(7, 24)).astype(np.float32)])
    idx = build_float_index(g)
    slow_d, slow_i = search_index(idx, q, 15)  # faiss' own scan
    monkeypatch.setattr(index_mod, "FAST_FLAT_MIN_ITEMS", 0)
    calls = []
    real = index_mod._search_flat_few
    monkeypatch.setattr(index_mod, "_search_flat_few", lambda *a: calls.append(1) or real(*a))
    fast_d, fast_i = search_index(idx, q, 15)
    assert calls == [1]
    np.testing.assert_array_equal(fast_i, slow_i)
    assert fast_i[0, :11].tolist() == [5, *range(1000, 1010)]
    np.testing.assert_allclose(fast_d, slow_d, rtol=1e-5, atol=1e-5)
    assert fast_d.dtype == np.float32 and fast_i.dtype == np.int64
    extra = rng.normal(size=(5, 24)).astype(np.float32)
    idx.add(extra)  # the cached norms must follow the index
    d, i = search_index(idx, extra[2:3], 1)
    assert i[0, 0] == 3002 and d[0, 0] == pytest.approx(0.0, abs=1e-4)
    assert search_index(idx, q, 5000)[1].shape == (8, 3005)  # k beyond the index: all of it


def test_round_trip_with_metadata(tmp_path):
    g = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    path = tmp_path / "sub" / "gallery.faiss"
    meta = save_index(
        build_float_index(g),
        path,
        {
            "class_names": ["a", "b"],
            "labels": np.array([0, 1, 0, 1, 0, 1]),
            "paths": [f"p{i}.png" for i in range(6)],
            "checkpoint": "x.ckpt",
        },
    )
    assert path.is_file() and (tmp_path / "sub" / "gallery.faiss.json").is_file()
    idx, loaded = load_index(path, expected_dim=4)
    assert loaded == meta == json.loads((tmp_path / "sub" / "gallery.faiss.json").read_text())
    assert loaded["dimension"] == 4 and loaded["metric"] == "l2" and loaded["kind"] == "IndexFlatL2"
    assert loaded["labels"] == [0, 1, 0, 1, 0, 1] and loaded["class_names"] == ["a", "b"]
    assert "created" in loaded and "sketchquant_version" in loaded
    assert idx.ntotal == 6
    np.testing.assert_array_equal(search_index(idx, g[:2], 1)[1][:, 0], [0, 1])
    assert [p.name for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(ValueError, match="labels has 2 entries but the index holds 6"):
        save_index(idx, path, {"labels": [0, 1]})


def test_load_errors(tmp_path):
    g = np.zeros((3, 8), dtype=np.float32)
    path = tmp_path / "g.faiss"
    with pytest.raises(FileNotFoundError, match="g.faiss does not exist"):
        load_index(path)
    save_index(build_float_index(g), path)
    with pytest.raises(ValueError, match=r"g.faiss has dimension 8 but the model produces 256"):
        load_index(path, expected_dim=256)
    (tmp_path / "g.faiss.json").write_text("{not json")
    with pytest.raises(ValueError, match="sidecar .*g.faiss.json is corrupt"):
        load_index(path)
    (tmp_path / "g.faiss.json").unlink()
    with pytest.raises(FileNotFoundError, match="no metadata sidecar"):
        load_index(path)


def test_atomic_write_keeps_existing_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "g.faiss"
    save_index(build_float_index(np.ones((3, 4), dtype=np.float32)), path, {"checkpoint": "old"})
    before = path.read_bytes()
    before_meta = (tmp_path / "g.faiss.json").read_text()

    def broken_write(index, fname):
        with open(fname, "wb") as fh:
            fh.write(b"half an ind")
        raise OSError("disk full")

    monkeypatch.setattr(index_mod.faiss, "write_index", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_index(build_float_index(np.zeros((5, 4), dtype=np.float32)), path, {"checkpoint": "new"})
    assert path.read_bytes() == before
    assert (tmp_path / "g.faiss.json").read_text() == before_meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.faiss", "g.faiss.json"]
    monkeypatch.undo()
    idx, meta = load_index(path, expected_dim=4)
    assert idx.ntotal == 3 and meta["checkpoint"] == "old"


def test_search_errors():
    idx = build_float_index(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="queries have dimension 2 but the index has dimension 4"):
        search_index(idx, np.zeros((1, 2), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        search_index(idx, np.zeros((1, 4), dtype=np.float32), 0)
