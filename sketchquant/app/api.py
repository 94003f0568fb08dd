"""The JSON search API of ``sketchquant serve``, the checks every query image goes through (the page's
uploads and drawings as well as the API's), and the page's search function.

    POST /api/search   multipart: ``image`` (file), optional ``k`` and ``features`` (form fields)
                       -> {"results": [{"rank", "path", "label", "distance"}], "gallery": {...},
                           "features": ..., "k": ...}
    GET  /api/info     -> {"photos", "method", "checkpoint_sha256", "index_type", "built", ...}

``path`` is the photo's path as the manifest stores it (relative to the gallery's image root);
``distance`` is the distance the ranking used for that feature kind (lower = closer). ``k`` runs from 1
to :data:`MAX_K`; a ``k`` above the gallery's size returns the whole gallery. Bad input is a 4xx with
``{"error": "<one line naming what was wrong>"}``; a gallery folder that is gone is a 503.

An upload is checked in this order, each step before the costlier next one: its byte count (while it
arrives), empty, PIL's header (``Image.open`` decodes no pixels), the pixel count, then the decode.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from sketchquant.app.gallery import Gallery, GalleryError, GalleryGoneError, LiveGallery
from sketchquant.datamodules.transforms import load_rgb

__all__ = [
    "BLANK_MESSAGE",
    "MAX_K",
    "Limits",
    "UploadError",
    "add_api_routes",
    "open_image",
    "page_search",
    "query_array",
    "run_search",
    "search_drawing",
]

BLANK_MESSAGE = "The canvas is blank: draw a sketch (or upload one), then press Search."
MAX_K = 1000
MB = 2**20  # as Gradio's own message counts them
THUMB = 256  # the page's result thumbnails (px)
FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers and the small fields beside the image
#: searches decoding and encoding at once (each holds a decoded image of up to --max-pixels)
SEARCH_SLOTS_COUNT = max(2, os.cpu_count() or 2)
SEARCH_SLOTS = threading.BoundedSemaphore(SEARCH_SLOTS_COUNT)


class UploadError(ValueError):
    """A query image or search request refused; ``status`` is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """The largest upload (bytes) and image (pixels) a server accepts."""

    max_bytes: int = 10 * MB
    max_pixels: int = 16 * 10**6

    @classmethod
    def of(cls, max_upload_mb: float, max_pixels: float) -> Limits:
        if not max_upload_mb > 0 or not max_pixels > 0:
            raise ValueError(
                f"--max-upload-mb and --max-pixels must be positive, got {max_upload_mb} and {max_pixels}"
            )
        return cls(int(max_upload_mb * MB), int(max_pixels))

    @property
    def mb(self) -> str:
        return f"{self.max_bytes / MB:g} MB"

    @property
    def mpx(self) -> str:
        return f"{self.max_pixels / 10**6:g} Mpx"

    def too_large(self, size: int) -> UploadError:
        return UploadError(
            f"the upload is {size / MB:.1f} MB, over the limit of {self.mb} (serve --max-upload-mb)", 413
        )


def open_image(source: bytes | str | os.PathLike, limits: Limits) -> Image.Image:
    """The decoded image of an upload (bytes or a file), checked against ``limits`` before its pixels
    are decoded; :class:`UploadError` (one line, naming the limit) otherwise."""
    size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if size == 0:
        raise UploadError("the upload is empty (0 bytes): send an image file (PNG, JPEG, WebP, BMP)")
    if size > limits.max_bytes:
        raise limits.too_large(size)
    fh = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    try:
        try:
            im = Image.open(fh)  # the header only
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as err:
            if isinstance(err, Image.DecompressionBombError):
                raise UploadError(
                    f"the image is over the limit of {limits.mpx} (serve --max-pixels)", 413
                ) from None
            raise UploadError(
                "the upload is not an image this server reads (PNG, JPEG, WebP, BMP, GIF, ...)"
            ) from None
        w, h = im.size
        if w * h > limits.max_pixels:
            raise UploadError(
                f"the image is {w} × {h} = {w * h / 10**6:.1f} Mpx, over the limit of {limits.mpx} "
                "(serve --max-pixels)",
                413,
            )
        try:
            im.load()
        except Exception as err:  # noqa: BLE001 - whatever the decoder says, the file is broken
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise UploadError(f"the image is truncated or corrupt ({first})") from None
        return im
    finally:
        fh.close()


def query_array(image: Image.Image | np.ndarray | None, limits: Limits | None = None) -> np.ndarray | None:
    """An image (or a drawing) as the RGB uint8 array a search takes, transparency on white; ``None``
    when nothing is drawn (all near-white)."""
    if image is None:
        return None
    if isinstance(image, Image.Image):
        image = image.convert("RGBA") if image.mode not in ("RGB", "RGBA", "L") else image
    arr = np.asarray(image)
    if limits is not None and arr.ndim >= 2 and arr.shape[0] * arr.shape[1] > limits.max_pixels:
        raise UploadError(f"the image is over the limit of {limits.mpx} (serve --max-pixels)", 413)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise UploadError(f"an image must be H × W × 3 or 4, got {tuple(arr.shape)}")
    if arr.shape[-1] == 4:  # transparent -> white
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * alpha + 255.0 * (1 - alpha)).round().astype(np.uint8)
    arr = arr[..., :3].astype(np.uint8)
    if arr.size == 0 or int(arr.min()) >= 250:
        return None
    return arr


def parse_k(value: Any, default: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        k = int(str(value).strip()) if not isinstance(value, int | float) else int(value)
        if isinstance(value, float) and value != k:
            raise ValueError
    except ValueError:
        k = None
    if k is None or not 1 <= k <= MAX_K:
        raise UploadError(f"k must be a whole number from 1 to {MAX_K}, got {str(value)[:40]!r}")
    return k


def parse_features(value: Any, gallery: Gallery) -> str:
    if value is None or not str(value).strip():
        return gallery.default_features
    if str(value) not in gallery.features:
        raise UploadError(
            f"features must be one of {', '.join(gallery.features)} (this gallery), got {str(value)[:40]!r}"
        )
    return str(value)


def run_search(
    gallery: Gallery | LiveGallery, image: np.ndarray | None, k: Any, features: Any, default_k: int = 10
) -> tuple[Gallery, Any]:
    """``(gallery, QueryResult)``: :meth:`Gallery.search` of one query array, with the request's ``k``
    and ``features`` checked — what the page and the API both call."""
    g = gallery.get() if isinstance(gallery, LiveGallery) else gallery
    k, features = parse_k(k, default_k), parse_features(features, g)
    if image is None:
        raise UploadError(BLANK_MESSAGE.replace("The canvas", "The image"))
    return g, g.search([image], k=k, features=features)[0]


# --------------------------------------------------------------------------------------------------
# the page's search (its Gradio inputs, decoded by the checks above; thumbnails of the hits)


def _page_image(value: Any, limits: Limits, upload_dir: str | None) -> Any:
    """What a page input holds, decoded under ``limits``: a Sketchpad value (its ``composite``), a Gradio
    file payload (``{"path": ...}``, which must lie in Gradio's upload folder), a PIL image or an array."""
    if isinstance(value, dict) and ("composite" in value or "layers" in value):
        value = value.get("composite") if value.get("composite") is not None else value.get("background")
    if isinstance(value, dict):
        path = value.get("path")
        if not path:
            raise UploadError("the upload did not arrive (no file): upload it again")
        real = Path(path).resolve()
        if upload_dir is not None and not real.is_relative_to(Path(upload_dir).resolve()):
            raise UploadError("the upload is not in this server's upload folder: upload it again")
        return open_image(real, limits)
    return value


def search_drawing(
    gallery: Gallery | LiveGallery,
    value: Any,
    k: int = 12,
    features: str | None = None,
    *,
    upload: Any = None,
    limits: Limits | None = None,
    upload_dir: str | None = None,
):
    """``(items, message)`` for the page: ``items`` = ``[(thumbnail, caption)]`` of the top ``k`` for the
    drawing ``value`` (or, when it is blank, the ``upload``)."""
    limits = limits or Limits()
    arr = query_array(_page_image(value, limits, upload_dir), limits)
    if arr is None and upload is not None:
        arr = query_array(_page_image(upload, limits, upload_dir), limits)
    if arr is None:
        return [], BLANK_MESSAGE
    g, res = run_search(gallery, arr, k, features)
    items = []
    for h in res.hits:
        try:
            im = load_rgb(h.path)
        except Exception:  # noqa: BLE001 - a moved photo shows grey
            im = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
        im.thumbnail((THUMB, THUMB))
        caption = f"#{h.rank} " + (f"{h.label} · " if h.label else "") + f"{h.distance:.3f}"
        items.append((im, caption))
    return items, f"Top {len(items)} of {len(g):,} ({res.features} features)."


def page_search(gallery, value, upload, k, features, *, limits: Limits, upload_dir: str | None = None):
    """:func:`search_drawing` that never raises: a refused input, a gone gallery or a failure is a line
    of text on the page (and, for a failure, one line in the log)."""
    try:
        with SEARCH_SLOTS:
            return search_drawing(
                gallery, value, k, features, upload=upload, limits=limits, upload_dir=upload_dir
            )
    except (UploadError, GalleryError, FileNotFoundError) as err:
        return [], f"**{(str(err).splitlines() or ['?'])[0]}**"
    except Exception as err:  # noqa: BLE001 - a message on the page, never a traceback
        line = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        print(f"sketchquant serve: a page search failed: {line}", file=sys.stderr)
        return [], f"Search failed: {line}"


# --------------------------------------------------------------------------------------------------
# the routes


def _error(status: int, err: BaseException | str) -> JSONResponse:
    text = (str(err).splitlines() or [type(err).__name__])[0] if not isinstance(err, str) else err
    return JSONResponse({"error": text}, status_code=status)


class _TooLarge(Exception):
    pass


async def _read_form(request: Request, limits: Limits) -> Any:
    """The multipart form, read while counting bytes: an upload over the limit is refused as it
    arrives (the rest is drained, up to a bound, so the client reads the answer)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise UploadError(
            "POST /api/search takes multipart/form-data with the image in the field 'image' "
            "(e.g. curl -F image=@sketch.png -F k=10 URL/api/search)",
            415,
        )
    budget = limits.max_bytes + FORM_OVERHEAD
    seen = 0

    async def counted():
        nonlocal seen
        stream = request.stream()
        async for chunk in stream:
            seen += len(chunk)
            if seen > budget:
                async for rest in stream:  # drain (bounded), so that the client reads the answer
                    seen += len(rest)
                    if seen > 8 * budget:
                        break
                raise _TooLarge
            yield chunk

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > budget:
        seen = int(declared)
        async for _ in counted():
            pass
    try:
        return await MultiPartParser(request.headers, counted(), max_files=2, max_fields=8).parse()
    except MultiPartException as err:
        raise UploadError(f"the multipart body is malformed: {err.message}") from None


def add_api_routes(app: FastAPI, live: LiveGallery, limits: Limits, default_k: int = 10) -> None:
    """``GET /api/info`` and ``POST /api/search`` on ``app`` (before Gradio is mounted at ``/``)."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:  # 404, 405: JSON too
        return _error(exc.status_code, str(exc.detail))

    @app.get("/api/info")
    def info() -> JSONResponse:
        try:
            return JSONResponse(live.get().info())
        except GalleryGoneError as err:
            return _error(503, err)

    def answer(data: bytes, k: Any, features: Any) -> dict:
        with SEARCH_SLOTS:
            g = live.get()  # a gone gallery and a bad k or features fail before the upload is decoded
            k, features = parse_k(k, default_k), parse_features(features, g)
            g, res = run_search(g, query_array(open_image(data, limits), limits), k, features)
        hits = [
            {"rank": h.rank, "path": h.relpath, "label": h.label, "distance": h.distance} for h in res.hits
        ]
        return {"results": hits, "gallery": g.info(), "features": res.features, "k": k}

    @app.post("/api/search")
    async def search(request: Request) -> JSONResponse:
        try:
            try:
                form = await _read_form(request, limits)
            except _TooLarge:
                declared = int(request.headers.get("content-length") or 0)
                raise limits.too_large(max(declared, limits.max_bytes + 1)) from None
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise UploadError("the request has no file in the multipart field 'image'")
            data = await upload.read(limits.max_bytes + 1)
            if len(data) > limits.max_bytes:
                raise limits.too_large(upload.size or len(data))
            payload = await run_in_threadpool(answer, data, form.get("k"), form.get("features"))
        except UploadError as err:
            return _error(err.status, err)
        except GalleryGoneError as err:
            return _error(503, err)
        except (GalleryError, FileNotFoundError) as err:
            return _error(400, err)
        except Exception as err:  # noqa: BLE001 - a bug: one line in the log and in the answer
            line = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
            print(f"sketchquant serve: /api/search failed: {line}", file=sys.stderr)
            return _error(500, f"internal error ({line})")
        return JSONResponse(payload)

    @app.api_route("/api/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    def other(rest: str, request: Request) -> JSONResponse:
        if rest in ("search", "info"):
            method = "POST" if rest == "search" else "GET"
            return _error(405, f"/api/{rest} takes {method}, not {request.method}")
        return _error(404, f"no /api/{rest}: the API is POST /api/search and GET /api/info")
