"""Load and fault benchmark of ``sketchquant serve`` (issue 22): N concurrent clients of the JSON API on
loopback, a fixed count of searches per phase, bounded in time.

    python benchmarks/serve_load.py [--clients 8] [--searches 400] [--photos 600] [--tiny]
                                    [--gallery GALLERY] [--features raw,proto,fused] [--fusion distance]
                                    [--max-seconds 300] [--out benchmarks/results/serve_load.json]

- **load**: ``--clients`` threads, each with its own keep-alive HTTP connection, send ``--searches``
  ``POST /api/search`` requests in all (a sketch PNG each, ``k`` 10, the feature kinds in turn):
  throughput (searches/s over the phase's wall time), latency p50 / p95 / p99 (request sent → JSON
  read), errors (any answer but 200, or a failed connection; goal 0) and the server's peak resident
  memory (``VmHWM`` of its process).
- **rebuild**: the same again, and when half of the searches are answered the gallery is rebuilt
  under the running server by ``sketchquant index`` in another process (with ~10 % more photos in the
  synthetic setup): errors (goal 0), whether the answers switched to the new gallery, the rebuild's time.

The server is ``sketchquant serve`` in its own process (started in the temp folder, ``127.0.0.1`` only).
Without ``--gallery`` the setup is synthetic: the default method-B network with random weights (speed
only; ``--tiny``: timm's test network at 32 px) and ``--photos`` generated photos in 10 class folders;
``--gallery`` serves a copy of an existing gallery (rebuilt from the checkpoint and images its manifest
names; the original is not touched). Timings depend on the machine's load: the results file records it
(``benchmarks/common.py``). Run it alone; ``--tiny --photos 40 --searches 40 --clients 4 --out
/tmp/serve_load.json`` is a smoke run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before timm / huggingface_hub are imported
os.environ.setdefault("WANDB_MODE", "offline")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from common import random_checkpoint, started, write_results  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from sketchquant.core.report import print_table  # noqa: E402

CLI = [sys.executable, "-m", "sketchquant.app.cli"]
HOST = "127.0.0.1"  # loopback only


# --------------------------------------------------------------------------------------------------
# setup


def _photos(folder: Path, first: int, n: int, size: int) -> None:
    rng = np.random.default_rng(first)
    for i in range(first, first + n):
        d = folder / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i:06d}.jpg")


def _sketches(count: int = 16) -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(count):
        im = Image.new("L", (256, 256), 255)
        draw = ImageDraw.Draw(im)
        for _ in range(4):
            draw.line([tuple(rng.integers(10, 246, 2).tolist()) for _ in range(3)], fill=0, width=6)
        buf = io.BytesIO()
        im.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


# --------------------------------------------------------------------------------------------------
# the clients


def _percentiles(seconds: list[float]) -> dict:
    lat = np.array(seconds) * 1000
    if not len(lat):
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    return {f"p{q}_ms": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)}


def run_phase(url: str, args, sketches: list[bytes], halfway=None) -> dict:
    """``args.searches`` searches from ``args.clients`` threads. With ``halfway``: once half of them are
    answered it runs (in this thread); the clients keep searching while it runs (``during``, not counted
    in ``args.searches``), then send the other half. Bounded by ``args.max_seconds``."""
    kinds = args.features.split(",")
    half_n = args.searches // 2 if halfway is not None else args.searches
    lock, counter = threading.Lock(), {"next": 0, "done": 0, "extra": 0}
    records: list[tuple] = []  # (start, seconds, status, generation, error, tag)
    deadline = time.monotonic() + args.max_seconds
    half, finished = threading.Event(), threading.Event()
    if halfway is None:
        finished.set()

    def client() -> None:
        with httpx.Client(timeout=120) as http:
            while time.monotonic() < deadline:
                with lock:
                    if counter["next"] >= half_n and not finished.is_set():
                        tag, i = "during", counter["extra"]
                        counter["extra"] += 1
                    else:
                        i = counter["next"]
                        counter["next"] += 1
                        tag = "before" if i < half_n and halfway is not None else "after"
                if tag != "during" and i >= args.searches:
                    return
                if tag == "during" and (not half.is_set() or i >= 10 * args.searches):
                    time.sleep(0.01)  # the first half is still being answered, or enough sent meanwhile
                    continue
                files = {"image": ("sketch.png", sketches[i % len(sketches)], "image/png")}
                data = {"k": "10", "features": kinds[i % len(kinds)]}
                t0 = time.perf_counter()
                try:
                    r = http.post(f"{url}api/search", files=files, data=data)
                    body = r.json()
                    gen = body.get("gallery", {}).get("generation")
                    rec = (t0, time.perf_counter() - t0, r.status_code, gen, body.get("error", ""), tag)
                except Exception as err:  # noqa: BLE001 - a failed request is an error of the phase
                    rec = (t0, time.perf_counter() - t0, 0, None, f"{type(err).__name__}: {err}", tag)
                with lock:
                    records.append(rec)
                    counter["done"] += tag != "during"
                    if counter["done"] >= half_n:
                        half.set()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    extra = {}
    if halfway is not None:
        half.wait(timeout=max(0.0, deadline - time.monotonic()))
        try:
            extra = halfway()
        finally:
            finished.set()
    for t in threads:
        t.join(timeout=max(1.0, deadline - time.monotonic() + 120))
    wall = time.perf_counter() - t0
    errors = [r for r in records if r[2] != 200]
    out = {
        "clients": args.clients,
        "searches": len(records),
        "asked": args.searches,
        "stopped_by_time_limit": sum(r[5] != "during" for r in records) < args.searches,
        "seconds": round(wall, 2),
        "throughput_per_s": round(len(records) / wall, 2) if wall else None,
        **_percentiles([r[1] for r in records]),
        "errors": len(errors),
        "error_examples": sorted({f"{r[2]} {r[4]}"[:200] for r in errors})[:5],
    }
    if halfway is not None:
        for tag in ("before", "during", "after"):
            part = [r for r in records if r[5] == tag]
            out[tag] = {"searches": len(part), "errors": sum(r[2] != 200 for r in part)}
            out[tag].update(
                _percentiles([r[1] for r in part]), generations=sorted({r[3] for r in part if r[3]})
            )
        out.update(extra)
        after = sorted((r for r in records if r[5] == "after"), key=lambda r: r[0])
        new = extra.get("new_generation")
        out["after"]["old_generation_answers"] = sum(r[3] != new for r in after)  # while the switch ran
        out["switched"] = bool(after) and after[-1][3] == new
    return out


# --------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--searches", type=int, default=400, help="searches per phase")
    ap.add_argument("--photos", type=int, default=600, help="synthetic gallery size (without --gallery)")
    ap.add_argument("--tiny", action="store_true", help="timm's test network at 32 px (smoke runs)")
    ap.add_argument("--fusion", choices=("distance", "feature"), default="distance", help="synthetic setup")
    ap.add_argument("--gallery", default=None, help="serve a copy of this gallery instead")
    ap.add_argument("--features", default="raw,proto,fused", help="the kinds searched, in turn")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time bound of each phase")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/serve_load.json"))
    args = ap.parse_args(argv)
    if not 1 <= args.clients <= 64 or not 1 <= args.searches <= 100_000:
        ap.error("--clients must be 1..64 and --searches 1..100000")
    meta = started(None if argv is None else [sys.argv[0], *argv])

    with tempfile.TemporaryDirectory(prefix="sq-serve-load-") as tmpdir:
        tmp = Path(tmpdir)
        gallery = tmp / "gallery"
        if args.gallery:
            shutil.copytree(args.gallery, gallery)
            m = json.loads((gallery / "manifest.json").read_text())
            ckpt, images = m["checkpoint"]["path"], m["source"]
            st = m["settings"]  # rebuilt as it was built
            overrides = [f"--index-type={m['index_type']}"]
            if "pq_m" in st:
                overrides += [f"--pq-m={st['pq_m']}", f"--pq-k={st['pq_k']}", f"eval.fusion={st['fusion']}"]
                overrides += [f"eval.fusion_lambda={st['fusion_lambda']}"]
            setup = {"gallery": str(args.gallery), "photos": m["count"], "method": m["method"]}
        else:
            over = [f"eval.fusion={args.fusion}"]
            ckpt = str(random_checkpoint(tmp / "bench.ckpt", args.tiny, over, inference=True))
            images = tmp / "photos"
            size = 32 if args.tiny else 224
            _photos(images, 0, args.photos, size)
            overrides = []
            subprocess.run(
                [*CLI, "index", "--ckpt", ckpt, "--images", str(images), "--out", str(gallery)],
                check=True,
                cwd=tmp,
            )
            setup = {
                "gallery": "synthetic",
                "photos": args.photos,
                "photo_px": size,
                "tiny": args.tiny,
                "fusion": args.fusion,
            }
        setup["features"] = args.features.split(",")
        port = _free_port()
        url = f"http://{HOST}:{port}/"
        log = tmp / "serve.log"
        with open(log, "w") as fh:
            server = subprocess.Popen(
                [*CLI, "serve", "--gallery", str(gallery), "--host", HOST, "--port", str(port)],
                cwd=tempfile.gettempdir(),
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        try:
            t0 = time.monotonic()
            while True:
                try:
                    if httpx.get(f"{url}api/info", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() - t0 > 180:
                    raise SystemExit(f"the server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
            setup["server_start_s"] = round(time.monotonic() - t0, 1)
            sketches = _sketches()
            httpx.post(
                f"{url}api/search", files={"image": ("s.png", sketches[0], "image/png")}, timeout=120
            )  # warm-up
            load = run_phase(url, args, sketches)
            load["peak_rss_mb"] = _peak_rss_mb(server.pid)

            def rebuild() -> dict:
                if not args.gallery:
                    _photos(images, args.photos, max(1, args.photos // 10), setup["photo_px"])
                t = time.perf_counter()
                proc = subprocess.run(
                    [
                        *CLI,
                        "index",
                        "--ckpt",
                        ckpt,
                        "--images",
                        str(images),
                        "--out",
                        str(gallery),
                        *overrides,
                    ],
                    cwd=tmp,
                    capture_output=True,
                    text=True,
                )
                new = json.loads((gallery / "manifest.json").read_text())
                return {
                    "rebuild_s": round(time.perf_counter() - t, 1),
                    "rebuild_ok": proc.returncode == 0,
                    "new_generation": new["data_dir"],
                    "photos_after": new["count"],
                }

            during = run_phase(url, args, sketches, halfway=rebuild)
            during["peak_rss_mb"] = _peak_rss_mb(server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        text = log.read_text()
        setup["server_log_tracebacks"] = text.count("Traceback")

    rows = [
        (
            name,
            p["clients"],
            p["searches"],
            p["errors"],
            p["throughput_per_s"],
            p["p50_ms"],
            p["p95_ms"],
            p["p99_ms"],
            p["peak_rss_mb"],
        )
        for name, p in (("load", load), ("rebuild in the middle", during))
    ]
    print_table(
        f"sketchquant serve on {HOST}: {setup['photos']} photos, features {args.features}",
        ["phase", "clients", "searches", "errors", "searches/s", "p50 ms", "p95 ms", "p99 ms", "peak RSS MB"],
        rows,
    )
    print(
        f"rebuild: {during.get('rebuild_s')} s, answers switched to the new gallery: {during['switched']}; "
        f"tracebacks in the server log: {setup['server_log_tracebacks']}"
    )
    goals = {
        "errors_load": load["errors"] == 0,
        "errors_rebuild": during["errors"] == 0,
        "switched": during["switched"],
    }
    write_results(args.out, meta, {"setup": setup, "load": load, "rebuild": during, "goals_met": goals})
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
