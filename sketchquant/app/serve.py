"""The drawing page and the JSON search API on one server: draw a sketch (mouse or touch) or upload one,
press Search, see the gallery's top k; or ``POST /api/search`` (:mod:`sketchquant.app.api`).

Gradio's Sketchpad is what ML users know, it runs offline (analytics off, system fonts, no share link,
no server-side rendering process) and it is one pip package. The page is mounted on a FastAPI app that
also carries the API; both answer through the same checks and the same :meth:`Gallery.search`, from a
:class:`~sketchquant.app.gallery.LiveGallery`: a rebuilt gallery is picked up without a restart.

Files: the page serves no file from disk but Gradio's own front end, its upload folder and its cache.
Results are thumbnails made from the gallery's images (cached by Gradio), never paths. The working
directory, the gallery folder, the image root and the checkpoint's folder are on Gradio's blocked list,
except one that holds Gradio's upload folder (the working directory ``/tmp`` or ``/``): blocking that
would refuse every upload. Every other file is refused by Gradio's allow-list (``allowed_paths`` is
empty). Uploads are checked for bytes (Gradio's ``max_file_size`` and ours), then pixels from the
header, before they are decoded. The drawing's inputs reach the search unprocessed
(``preprocess=False``), so no upload is decoded by Gradio and every refusal is a message on the page.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from PIL import Image

from sketchquant.app.api import (
    BLANK_MESSAGE,
    MAX_K,
    SEARCH_SLOTS_COUNT,
    Limits,
    add_api_routes,
    page_search,
    search_drawing,
)
from sketchquant.app.gallery import Gallery, GalleryError, LiveGallery

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__all__ = ["BLANK_MESSAGE", "Running", "ServeError", "build_app", "port_free", "search_drawing", "serve"]


class ServeError(ValueError):
    """The page cannot start (port taken, bad host); the message says what to do."""


def port_free(host: str, port: int) -> bool:
    try:
        _bind(host, port).close()
    except ServeError:
        return False
    return True


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as err:
        sock.close()
        if err.errno == 98:  # EADDRINUSE
            raise ServeError(
                f"port {port} on {host} is already in use: stop what runs there or pick another with --port"
            ) from None
        raise ServeError(f"cannot serve on {host}:{port}: {err}") from None
    return sock


def _gradio():
    import gradio  # the page's toolkit: ~2 s to import, and only after GRADIO_ANALYTICS_ENABLED is set

    return gradio


# --------------------------------------------------------------------------------------------------
# the page


def build_app(gallery: Gallery | LiveGallery, k: int = 12, limits: Limits | None = None):
    """The Gradio Blocks of the page (not launched)."""
    gr = _gradio()
    limits = limits or Limits()
    upload_dir = gr.utils.get_upload_folder()
    g = gallery.gallery if isinstance(gallery, LiveGallery) else gallery

    def run(value, uploaded, k_value, feats):
        return page_search(gallery, value, uploaded, k_value, feats, limits=limits, upload_dir=upload_dir)

    def info():
        try:
            current = gallery.get() if isinstance(gallery, LiveGallery) else gallery
        except GalleryError as err:
            return f"## {title}\n**{err}**"
        return f"## {title}\n{current.describe()}"

    sketches = g.settings.get("query", "sketch") == "sketch"
    title = "Sketch search" if sketches else "Image search (draw, or better: upload an image)"
    with gr.Blocks(title="sketchquant search", analytics_enabled=False) as app:
        info_box = gr.Markdown(f"## {title}\n{g.describe()}", elem_id="sq-info")
        with gr.Row():
            with gr.Column(scale=1):
                pad = gr.Sketchpad(
                    label="Draw a sketch",
                    type="numpy",
                    image_mode="RGBA",
                    canvas_size=(512, 512),
                    elem_id="sq-sketch",
                )
                upload = gr.Image(
                    label=f"…or upload {'a sketch' if sketches else 'an image'} (used when the canvas is "
                    f"blank; ≤ {limits.mb}, {limits.mpx})",
                    type="filepath",
                    sources=("upload", "clipboard"),
                    height=140,
                    elem_id="sq-upload",
                )
                with gr.Row():
                    k_box = gr.Slider(1, max(1, min(100, len(g))), value=min(k, len(g)), step=1, label="k")
                    feats = gr.Radio(
                        g.features, value=g.default_features, label="features", visible=len(g.features) > 1
                    )
                live = gr.Checkbox(value=False, label="search as I draw")
                button = gr.Button("Search", variant="primary", elem_id="sq-search")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="sq-status")
                grid = gr.Gallery(
                    label="results", columns=4, height="auto", elem_id="sq-results", object_fit="contain"
                )
        # preprocess=False: the inputs arrive as Gradio's file payloads, decoded by our checks only
        button.click(
            run,
            [pad, upload, k_box, feats],
            [grid, status],
            preprocess=False,
            api_name="search",
            concurrency_limit=SEARCH_SLOTS_COUNT,  # Gradio's default is one search at a time
        )

        def live_run(value, uploaded, k_value, feats_value, on):
            if not on:
                return gr.skip(), gr.skip()
            return run(value, uploaded, k_value, feats_value)

        pad.change(
            live_run,
            [pad, upload, k_box, feats, live],
            [grid, status],
            show_progress="hidden",
            preprocess=False,
            api_name=False,
        )
        app.load(info, None, info_box, api_name=False)
    return app


# --------------------------------------------------------------------------------------------------
# the server


def blocked_paths(candidates: Sequence[str | os.PathLike], keep: Sequence[str | os.PathLike]) -> list[str]:
    """``candidates`` (resolved) that hold none of the folders in ``keep`` (Gradio's upload folder)."""
    keep_r = [Path(k).resolve() for k in keep]
    out: list[str] = []
    for c in candidates:
        p = Path(c).resolve()
        if not any(k.is_relative_to(p) for k in keep_r) and str(p) not in out:
            out.append(str(p))
    return out


@dataclass
class Running:
    """A server started with ``block=False``: its ``url``, the FastAPI ``app``, the Gradio ``blocks`` and
    the ``live`` gallery; :meth:`close` stops it."""

    url: str
    app: FastAPI
    blocks: Any
    live: LiveGallery
    server: uvicorn.Server
    thread: threading.Thread | None = None

    def close(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=30)
        self.blocks.close()


def serve(
    gallery: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    k: int = 12,
    ckpt: str | os.PathLike | None = None,
    force: bool = False,
    trust: bool = False,
    max_upload_mb: float = 10.0,
    max_pixels: float = 16e6,
    block: bool = True,
    blocked: Sequence[str] = (),
) -> Running:
    """Open the gallery and serve the page and the API at ``http://host:port``. Returns a
    :class:`Running` at once when ``block=False`` (tests); otherwise runs until interrupted."""
    limits = Limits.of(max_upload_mb, max_pixels)
    if not 1 <= int(k) <= MAX_K:
        raise ServeError(f"--k must be from 1 to {MAX_K}, got {k}")
    sock = _bind(host, port)  # a busy port fails before the gallery is opened
    try:
        live = LiveGallery(gallery, ckpt, force=force, trust=trust)
        gr = _gradio()
        blocks = build_app(live, k=k, limits=limits)
    except BaseException:
        sock.close()
        raise
    # our own pixel check runs before any decode; PIL's must not refuse (or warn about) less than it
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, limits.max_pixels)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    g = live.gallery
    ckpt_dir = Path(ckpt if ckpt is not None else g.manifest["checkpoint"]["path"]).parent
    upload_dir = gr.utils.get_upload_folder()
    block_list = blocked_paths([Path.cwd(), Path(gallery), g.root, ckpt_dir, *blocked], keep=[upload_dir])
    app = FastAPI(title="sketchquant search", docs_url=None, redoc_url=None, openapi_url=None)
    add_api_routes(app, live, limits, default_k=k)
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    app = gr.mount_gradio_app(
        app,
        blocks,
        path="/",
        server_name=host,
        server_port=int(port),
        footer_links=[],
        allowed_paths=[],
        blocked_paths=block_list,
        show_error=False,
        max_file_size=limits.max_bytes,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        theme=theme,
    )
    blocks.has_launched = True  # turns on Gradio's check that inputs name only its uploaded files
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=int(port), log_level="warning", access_log=False, lifespan="on")
    )
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    if not block:
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            server.should_exit = True
            raise ServeError(f"the server on {host}:{port} did not start")
        return Running(url, app, blocks, live, server, thread)
    print(
        f"sketch search on {url} (JSON API: POST {url}api/search, GET {url}api/info) — {g.describe()} "
        "(Ctrl+C stops)"
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # pragma: no cover
        pass
    finally:
        blocks.close()
    return Running(url, app, blocks, live, server)
