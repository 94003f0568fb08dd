"""The JSON search API and the page's upload path of ``sketchquant serve`` (sketchquant.app.api / serve),
over real HTTP on loopback, with the server started from the system temp folder (as ``cd /tmp &&
sketchquant serve`` would: Gradio's upload folder lies under it). Bad input answers a 4xx naming what was
wrong (the API) or a line on the page (the page's own upload route and queue), never a traceback; a
rebuild under a running server switches its answers without one failed request."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from test_checkpoint_safety import tiny_run

pytestmark = pytest.mark.filterwarnings("ignore")

LIMIT_MB, LIMIT_PX = 0.2, 1e6  # small limits: the over-limit files stay small and fast


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(size=(64, 64), noise=False) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0]), np.uint8) if noise else np.full(size[::-1], 255, np.uint8)
    arr[size[1] // 4 : size[1] // 2, size[0] // 3 : size[0] // 3 + 4] = 0  # a stroke
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _copy_photos(root: Path, dest: Path, classes: list[str], per_class: int) -> Path:
    for name in classes:
        (dest / name).mkdir(parents=True, exist_ok=True)
        for p in sorted((root / "photo" / name).iterdir())[:per_class]:
            shutil.copy2(p, dest / name / p.name)
    return dest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny method-B model and a gallery (distance fusion) of its unseen-class photos."""
    from sketchquant.app.gallery import build_gallery

    tmp = tmp_path_factory.mktemp("api")
    data, ckpt = tiny_run(tmp_path_factory, "zs_sbir")
    root = data / "glyphs"
    unseen = (root / "unseen_classes.txt").read_text().split()
    photos = _copy_photos(root, tmp / "photos", unseen, 100)
    gallery = tmp / "gallery"
    build_gallery(ckpt, photos, gallery, overrides=["eval.fusion=distance"], quiet=True)
    sketch = sorted((root / "sketch" / unseen[0]).iterdir())[0]
    return {"tmp": tmp, "ckpt": ckpt, "root": root, "unseen": unseen, "gallery": gallery, "sketch": sketch}


@pytest.fixture(scope="module")
def server(setup):
    """The server, started with the system temp folder as its working directory (kept for the module)."""
    from sketchquant.app.serve import serve

    before = os.getcwd()
    os.chdir(tempfile.gettempdir())
    try:
        srv = serve(
            setup["gallery"], port=_free_port(), k=5, max_upload_mb=LIMIT_MB, max_pixels=LIMIT_PX, block=False
        )
        yield srv
        srv.close()
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def page(server):
    return Client(server.url, verbose=False)


def _search(url: str, data: bytes, name="q.png", **fields) -> httpx.Response:
    return httpx.post(f"{url}api/search", files={"image": (name, data, "image/png")}, data=fields, timeout=60)


# --------------------------------------------------------------------------------------------------
# answers


def test_info_names_the_gallery(setup, server):
    from sketchquant.app.gallery import sha256_file

    assert Path.cwd() == Path(tempfile.gettempdir()).resolve()
    r = httpx.get(f"{server.url}api/info", timeout=30)
    m = json.loads((setup["gallery"] / "manifest.json").read_text())
    assert r.status_code == 200
    info = r.json()
    assert info["photos"] == m["count"] == 21 and info["method"] == "zs_sbir"
    assert info["checkpoint_sha256"] == sha256_file(setup["ckpt"])
    assert info["index_type"] == "flat" and info["built"] == m["created"]
    assert info["features"] == ["raw", "proto", "fused"] and info["default_features"] == "fused"


@pytest.mark.parametrize("features", ["raw", "proto", "fused"])
def test_search_answers_as_the_python_api(setup, server, features):
    """The API ranks as Gallery.search (the one search function): same paths, labels and distances."""
    from sketchquant.app.gallery import Gallery

    r = _search(server.url, setup["sketch"].read_bytes(), k="4", features=features)
    assert r.status_code == 200, r.text
    body = r.json()
    expect = Gallery.open(setup["gallery"]).search([str(setup["sketch"])], k=4, features=features)[0].hits
    assert body["features"] == features and body["k"] == 4 and body["gallery"]["photos"] == 21
    assert [(h["rank"], h["path"], h["label"]) for h in body["results"]] == [
        (h.rank, h.relpath, h.label) for h in expect
    ]
    assert [h["distance"] for h in body["results"]] == pytest.approx([h.distance for h in expect], abs=1e-5)
    assert body["results"][0]["path"].startswith(body["results"][0]["label"] + "/")  # relative to the root


def test_k_default_and_above_the_gallery_size(setup, server):
    """No k: the server's --k (5). k above the gallery's size: the whole gallery (up to MAX_K)."""
    data = setup["sketch"].read_bytes()
    assert len(_search(server.url, data).json()["results"]) == 5
    body = _search(server.url, data, k="500").json()
    assert body["k"] == 500 and len(body["results"]) == 21
    assert sorted(h["rank"] for h in body["results"]) == list(range(1, 22))


# --------------------------------------------------------------------------------------------------
# bad input: the API


BAD_UPLOADS = {
    "non-image": (b"this is not an image\n" * 10, 400, "not an image"),
    "zero-byte": (b"", 400, "empty (0 bytes)"),
    "over-size": (
        os.urandom(int(LIMIT_MB * 2**20) + 50_000),
        413,
        "over the limit of 0.2 MB (serve --max-upload-mb)",
    ),
    "over-pixels": (None, 413, "1200 × 1000 = 1.2 Mpx, over the limit of 1 Mpx (serve --max-pixels)"),
    "truncated": (None, 400, "truncated or corrupt"),
}


def _bad(kind: str) -> bytes:
    data = BAD_UPLOADS[kind][0]
    if kind == "over-pixels":
        return _png((1200, 1000))
    if kind == "truncated":
        full = _png((64, 64), noise=True)
        return full[: len(full) // 2]
    return data


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_upload_is_a_4xx_naming_it(server, kind, capfd):
    _, status, text = BAD_UPLOADS[kind]
    t0 = time.perf_counter()
    r = _search(server.url, _bad(kind))
    assert time.perf_counter() - t0 < 5
    assert r.status_code == status and text in r.json()["error"], r.text
    assert "\n" not in r.json()["error"]
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(
    "fields, status, text",
    [
        ({"k": "0"}, 400, "k must be a whole number from 1 to 1000, got '0'"),
        ({"k": "-3"}, 400, "got '-3'"),
        ({"k": "ten"}, 400, "got 'ten'"),
        ({"k": "1001"}, 400, "from 1 to 1000"),
        ({"features": "codes"}, 400, "features must be one of raw, proto, fused (this gallery), got 'codes'"),
    ],
)
def test_bad_k_or_features_is_a_400(setup, server, fields, status, text, capfd):
    r = _search(server.url, setup["sketch"].read_bytes(), **fields)
    assert r.status_code == status and text in r.json()["error"]
    assert "Traceback" not in capfd.readouterr().err


def test_malformed_requests_are_4xx_json(server):
    r = httpx.post(f"{server.url}api/search", data={"k": "3"}, files={"other": ("a", b"x")}, timeout=30)
    assert r.status_code == 400 and "no file in the multipart field 'image'" in r.json()["error"]
    r = httpx.post(f"{server.url}api/search", json={"image": "x"}, timeout=30)
    assert r.status_code == 415 and "multipart/form-data" in r.json()["error"]
    blank = io.BytesIO()
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)).save(blank, "PNG")
    r = _search(server.url, blank.getvalue())
    assert r.status_code == 400 and "blank" in r.json()["error"]
    r = httpx.get(f"{server.url}api/search", timeout=30)
    assert r.status_code == 405 and "POST" in r.json()["error"]


# --------------------------------------------------------------------------------------------------
# bad input: the page (Gradio's upload route, then its queue: what the browser does)


@pytest.mark.parametrize("kind", ["non-image", "zero-byte", "over-pixels", "truncated"])
def test_bad_upload_on_the_page_is_a_message(server, page, kind, tmp_path, capfd):
    path = tmp_path / f"{kind}.png"
    path.write_bytes(_bad(kind))
    items, message = page.predict(None, handle_file(str(path)), 5, "fused", api_name="/search")
    assert items == [] and BAD_UPLOADS[kind][2] in message
    assert "Traceback" not in capfd.readouterr().err


def test_page_upload_from_the_temp_folder_works(setup, server, page):
    """Uploads land in Gradio's folder under the working directory (/tmp): accepted, and searched."""
    items, message = page.predict(None, handle_file(str(setup["sketch"])), 3, "raw", api_name="/search")
    assert message == "Top 3 of 21 (raw features)." and len(items) == 3


def test_over_size_upload_refused_by_the_upload_route(server):
    big = os.urandom(int(LIMIT_MB * 2**20) + 1000)
    r = httpx.post(
        f"{server.url}gradio_api/upload", files={"files": ("big.png", big, "image/png")}, timeout=30
    )
    assert r.status_code == 413 and f"maximum allowed size of {int(LIMIT_MB * 2**20)} bytes" in r.text


def test_file_route_serves_no_file_from_disk(setup, server, tmp_path):
    """Gradio's file route refuses the gallery, its photos, the checkpoint, the working directory's
    files and the rest of the disk; the blocked list leaves out the folder that holds Gradio's uploads."""
    from gradio import utils

    near = Path(tempfile.gettempdir()) / "sq-not-served.txt"
    near.write_text("private")
    try:
        photo = next((setup["tmp"] / "photos").rglob("*.png"))
        for path in (setup["gallery"] / "manifest.json", photo, setup["ckpt"], near, Path("/etc/passwd")):
            r = httpx.get(f"{server.url}gradio_api/file={path}", timeout=30)
            assert r.status_code in (403, 404), path
    finally:
        near.unlink()
    assert str(setup["gallery"].resolve()) in server.blocks.blocked_paths
    assert not any(Path(utils.get_upload_folder()).is_relative_to(p) for p in server.blocks.blocked_paths)


# --------------------------------------------------------------------------------------------------
# rebuilds under a running server, the folder deleted


def _stream(url: str, sketch: bytes, stop: threading.Event, log: list) -> None:
    kinds = ["raw", "proto", "fused"]
    i = 0
    while not stop.is_set():
        r = _search(url, sketch, k="50", features=kinds[i % 3])
        body = r.json()
        log.append((r.status_code, body.get("gallery", {}).get("generation"), body))
        i += 1


def _wait_for(url: str, generation: str, timeout=60.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = httpx.get(f"{url}api/info", timeout=30).json()
        if info.get("generation") == generation:
            return info
        time.sleep(0.1)
    raise AssertionError(f"the server never switched to {generation}")


def test_second_build_into_one_folder_fails_naming_the_first(setup, tmp_path):
    """Another process holds the gallery's build lock: a build fails at once naming its pid, host and
    start time, and leaves the gallery as it was; once the holder is gone, builds run again."""
    from sketchquant.app.gallery import Gallery, GalleryBusyError, build_gallery

    out = tmp_path / "g"
    photos = _copy_photos(setup["root"], tmp_path / "photos", setup["unseen"][:2], 2)
    build_gallery(setup["ckpt"], photos, out, quiet=True)
    before = (out / "manifest.json").read_text()
    holder = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from sketchquant.app.gallery.lock import build_lock\n"
        "with build_lock(Path(sys.argv[1])):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        busy = rf"{out} is being built by another process \(pid {proc.pid} on host {socket.gethostname()}, started "
        with pytest.raises(GalleryBusyError, match=busy):
            build_gallery(setup["ckpt"], photos, out, update=True, quiet=True)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert (out / "manifest.json").read_text() == before
    build_gallery(setup["ckpt"], photos, out, update=True, quiet=True)  # the lock died with its holder
    assert len(Gallery.open(out)) == 4


@pytest.mark.slow
def test_rebuilds_and_updates_under_a_stream_of_searches(setup, tmp_path):
    """Four clients search (raw, proto and distance-fused features) while the gallery is rebuilt and then
    updated twice: no request fails, the answers switch to each new gallery, two generations stay on
    disk. Then the folder is deleted (a 503 naming it, the server up) and built again (answers again)."""
    from sketchquant.app.gallery import build_gallery
    from sketchquant.app.serve import serve

    root, unseen, ckpt = setup["root"], setup["unseen"], setup["ckpt"]
    photos = _copy_photos(root, tmp_path / "photos", unseen[:2], 3)
    gallery = tmp_path / "g"
    build = dict(overrides=["eval.fusion=distance"], quiet=True)
    build_gallery(ckpt, photos, gallery, **build)
    srv = serve(gallery, port=_free_port(), block=False)
    stop, log = threading.Event(), []
    sketch = setup["sketch"].read_bytes()
    clients = [threading.Thread(target=_stream, args=(srv.url, sketch, stop, log)) for _ in range(4)]
    try:
        for c in clients:
            c.start()
        seen = []
        for step in ("rebuild", "update", "update"):
            while len(log) < 6 * (len(seen) + 1):
                time.sleep(0.05)
            if step == "rebuild":
                _copy_photos(root, photos, unseen, 5)  # every class, more photos
            else:
                _copy_photos(root, photos, unseen, 5 + 1 + len(seen))
            build_gallery(ckpt, photos, gallery, update=step == "update", **build)
            m = json.loads((gallery / "manifest.json").read_text())
            info = _wait_for(srv.url, m["data_dir"])
            assert info["photos"] == m["count"] == len(list(photos.rglob("*.png")))
            seen.append((m["data_dir"], m["count"], set(m["items"]["relpaths"])))
        time.sleep(0.5)
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=60)
    failed = [(code, body) for code, _, body in log if code != 200]
    assert not failed, failed[:3]
    generations = [gen for _, gen, _ in log]
    for gen, count, relpaths in seen:  # each generation answered, with its own photos
        answers = [body for _, g, body in log if g == gen]
        assert answers, gen
        assert all(
            len(b["results"]) == count and {h["path"] for h in b["results"]} <= relpaths for b in answers
        )
    assert generations[-1] == seen[-1][0]
    assert sorted(p.name for p in gallery.glob("data-*")) == sorted([seen[-2][0], seen[-1][0]])
    # the folder deleted while serving: a clear error, the server stays up; built again: answers again
    try:
        shutil.rmtree(gallery)
        r = httpx.get(f"{srv.url}api/info", timeout=30)
        assert r.status_code == 503 and f"gallery {gallery} is gone" in r.json()["error"]
        r = _search(srv.url, sketch)
        assert r.status_code == 503 and "is gone" in r.json()["error"]
        items, message = Client(srv.url, verbose=False).predict(
            None, handle_file(str(setup["sketch"])), 3, "raw", api_name="/search"
        )
        assert items == [] and "is gone" in message
        assert httpx.get(srv.url, timeout=30).status_code == 200
        build_gallery(ckpt, photos, gallery, **build)
        r = _search(srv.url, sketch, k="3")
        assert r.status_code == 200 and r.json()["gallery"]["photos"] == seen[-1][1]
    finally:
        srv.close()
