"""The drawing page: draw a sketch (mouse or touch) or upload one, press Search, see the gallery's top k.

Gradio's Sketchpad is what ML users know, it runs offline (analytics off, system fonts, no share link,
no server-side rendering process) and it is one pip package. The page calls the same
:class:`~sketchquant.app.gallery.Gallery` as the command line.

It binds to 127.0.0.1 by default and serves no file from disk but Gradio's own front end: results
are sent as thumbnails made from the gallery's images (Gradio caches them in its temp folder), and
the working directory, the gallery folder and the image root are on Gradio's blocked list.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__all__ = ["ServeError", "build_app", "search_drawing", "serve", "port_free", "BLANK_MESSAGE"]

BLANK_MESSAGE = "The canvas is blank: draw a sketch (or upload one), then press Search."
THUMB = 256


class ServeError(ValueError):
    """The page cannot start (port taken, bad host); the message says what to do."""


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def _composite(value: Any) -> np.ndarray | None:
    """The drawing as an RGB uint8 array on white, or None when nothing is drawn."""
    if value is None:
        return None
    if isinstance(value, dict):
        img = value.get("composite")
        if img is None:
            img = value.get("background")
    else:
        img = value
    if img is None:
        return None
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    if arr.shape[-1] == 4:  # transparent -> white
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    arr = arr[..., :3].astype(np.uint8)
    if arr.size == 0 or int(arr.min()) >= 250:  # all (near) white: nothing drawn
        return None
    return arr


def search_drawing(gallery: Any, value: Any, k: int = 12, features: str | None = None):
    """``(items, message)`` for the page: ``items`` = ``[(thumbnail, caption)]`` of the top ``k``."""
    from PIL import Image

    from sketchquant.datamodules.transforms import load_rgb

    arr = _composite(value)
    if arr is None:
        return [], BLANK_MESSAGE
    res = gallery.search([arr], k=int(k), features=features or None)[0]
    items = []
    for h in res.hits:
        try:
            im = load_rgb(h.path)
        except Exception:  # noqa: BLE001 - a moved photo shows grey
            im = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        im.thumbnail((THUMB, THUMB))
        caption = f"#{h.rank} " + (f"{h.label} · " if h.label else "") + f"{h.distance:.3f}"
        items.append((im, caption))
    return items, f"Top {len(items)} of {len(gallery):,} ({res.features} features)."


def build_app(gallery: Any, k: int = 12):
    """The Gradio Blocks of the page (not launched)."""
    import gradio as gr

    def run(value, uploaded, k_value, feats):
        if _composite(value) is None and uploaded is not None:
            value = uploaded
        try:
            return search_drawing(gallery, value, k_value, feats)
        except Exception as err:  # noqa: BLE001 - a message on the page, never a traceback
            return [], f"Search failed: {err}"

    sketches = gallery.settings.get("query", "sketch") == "sketch"
    title = "Sketch search" if sketches else "Image search (draw, or better: upload an image)"
    with gr.Blocks(title="sketchquant search", analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\n{gallery.describe()}", elem_id="sq-info")
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
                    label=f"…or upload {'a sketch' if sketches else 'an image'} (used when the canvas is blank)",
                    type="numpy",
                    image_mode="RGBA",
                    sources=("upload", "clipboard"),
                    height=140,
                    elem_id="sq-upload",
                )
                with gr.Row():
                    k_box = gr.Slider(
                        1, max(1, min(100, len(gallery))), value=min(k, len(gallery)), step=1, label="k"
                    )
                    feats = gr.Radio(
                        gallery.features,
                        value=gallery.default_features,
                        label="features",
                        visible=len(gallery.features) > 1,
                    )
                live = gr.Checkbox(value=False, label="search as I draw")
                button = gr.Button("Search", variant="primary", elem_id="sq-search")
            with gr.Column(scale=2):
                status = gr.Markdown("", elem_id="sq-status")
                grid = gr.Gallery(
                    label="results", columns=4, height="auto", elem_id="sq-results", object_fit="contain"
                )
        button.click(run, [pad, upload, k_box, feats], [grid, status])

        def live_run(value, uploaded, k_value, feats_value, on):
            if not on:
                return gr.skip(), gr.skip()
            return run(value, uploaded, k_value, feats_value)

        pad.change(live_run, [pad, upload, k_box, feats, live], [grid, status], show_progress="hidden")
    return app


def serve(
    gallery: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    k: int = 12,
    ckpt: str | os.PathLike | None = None,
    force: bool = False,
    block: bool = True,
    blocked: Sequence[str] = (),
):
    """Open the gallery and serve the page at ``http://host:port``. Returns ``(app, url)`` when
    ``block=False`` (tests); otherwise runs until interrupted."""
    from sketchquant.app.gallery import Gallery

    if not port_free(host, port):
        raise ServeError(
            f"port {port} on {host} is already in use: stop what runs there or pick another with --port"
        )
    g = Gallery.open(gallery, ckpt, force=force)
    import gradio as gr

    app = build_app(g, k=k)
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    block_list = [str(Path.cwd()), str(Path(gallery).resolve()), str(g.root), *map(str, blocked)]
    try:
        app.launch(
            server_name=host,
            server_port=int(port),
            share=False,
            inbrowser=False,
            prevent_thread_lock=True,
            show_error=False,
            quiet=not block,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            allowed_paths=[],
            blocked_paths=block_list,
            footer_links=[],
            theme=theme,
        )
    except OSError as err:
        raise ServeError(f"cannot serve on {host}:{port}: {err}") from err
    url = f"http://{host}:{port}/"
    if not block:
        return app, url
    print(f"sketch search on {url} — {g.describe()} (Ctrl+C stops)")
    try:
        app.block_thread()
    except KeyboardInterrupt:  # pragma: no cover
        pass
    finally:
        app.close()
    return app, url
