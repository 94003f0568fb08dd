"""Opening a gallery and searching it (no Trainer: the network is loaded from the checkpoint)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from PIL import Image, ImageDraw

from sketchquant.app.checkpoints import checkpoint_config, load_network, read_checkpoint
from sketchquant.app.gallery.records import GalleryError, Hit, QueryResult, sha256_file
from sketchquant.app.gallery.store import (
    base_feature,
    eval_transform,
    is_codes,
    normalise,
    prototypes,
    read_manifest,
)
from sketchquant.app.methods import from_container, method_of
from sketchquant.core.io import atomic_save_image
from sketchquant.core.report import print_table
from sketchquant.core.retrieval.index import search_index
from sketchquant.core.retrieval.prototypes import FUSED, fused_distance_fn
from sketchquant.datamodules.transforms import load_rgb, to_rgb

# --------------------------------------------------------------------------------------------------
# open + search


class Gallery:
    """An opened gallery: its manifest, indexes and the network that encodes queries."""

    def __init__(
        self, path: Path, manifest: dict, cfg: Any, network: Any, indexes: dict, stored: dict | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.cfg = cfg
        self.network = network
        self.indexes = indexes
        self._stored = stored
        self.settings = manifest["settings"]
        self.root = Path(manifest["image_root"])
        items = manifest["items"]
        self.relpaths: list[str] = items["relpaths"]
        self.labels: list[str | None] = items["labels"]
        self.transform, _ = eval_transform(cfg)
        self._proto: np.ndarray | None = None
        self.overrides: tuple[str, ...] = ()
        self.checkpoint_sha256: str = manifest["checkpoint"]["sha256"]

    # ---- construction

    @staticmethod
    def build(*args: Any, **kwargs: Any) -> Any:
        """:func:`~sketchquant.app.gallery.build.build_gallery` (imported here: building needs Lightning's
        Trainer, searching does not)."""
        from sketchquant.app.gallery.build import build_gallery

        return build_gallery(*args, **kwargs)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        ckpt: str | os.PathLike | None = None,
        *,
        force: bool = False,
        overrides: Sequence[str] = (),
        trust: bool = False,
        reuse: Gallery | None = None,
    ) -> Gallery:
        """Open gallery ``path``. The network comes from the manifest's checkpoint; ``ckpt`` overrides it.
        The checkpoint's sha256 is compared with the manifest's *before* the file is read at all (a
        file of the same size and time can still differ); another sha256 is refused unless ``force``,
        and a checkpoint of another method always. ``trust``: see :mod:`sketchquant.app.checkpoints`.

        ``reuse``: an opened gallery (a previous generation of this one) whose network is taken as it is
        when the manifest records the checkpoint that network came from (same sha256, method, overrides):
        the checkpoint is then not read again. Everything a search reads is loaded here (the indexes;
        with distance fusion the stored features and prototypes): no search reads the data folder later,
        so a rebuild may remove it."""
        path = Path(path)
        manifest = read_manifest(path)
        if reuse is not None and ckpt is None and _same_network(reuse, manifest, overrides):
            network, digest = reuse.network, reuse.checkpoint_sha256
        else:
            network, digest = _checked_network(
                path, manifest, ckpt, force=force, overrides=overrides, trust=trust
            )
        # the gallery's own config (eval, data) with the checkpoint's weights
        cfg = from_container(manifest["config"], list(overrides))
        data = path / manifest["data_dir"]
        indexes = {}
        for name, info in manifest["indexes"].items():
            try:
                indexes[name] = faiss.read_index(str(data / info["file"]))
            except RuntimeError as err:
                raise GalleryError(f"gallery {path}: index {info['file']} is unreadable: {err}") from err
        g = cls(path, manifest, cfg, network, indexes)
        g.overrides = tuple(overrides)
        g.checkpoint_sha256 = digest
        if g.distance_fused:
            g._proto = prototypes(g.stored, base_feature(g.settings))
        return g

    @property
    def stored(self) -> dict[str, np.ndarray]:
        """``features.npz``: the stored features (and PQ codebook). Read at open when distance fusion
        needs them, else on first use (searching an index does not)."""
        if self._stored is None:
            with np.load(self.path / self.manifest["data_dir"] / "features.npz") as z:
                self._stored = {k: z[k] for k in z.files}
        return self._stored

    @property
    def distance_fused(self) -> bool:
        """``fused`` is the evaluator's distance fusion, computed at query time from the stored features."""
        return FUSED in self.settings["features"] and self.settings.get("fusion") == "distance"

    # ---- facts

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def features(self) -> list[str]:
        return list(self.settings["features"])

    @property
    def default_features(self) -> str:
        return self.settings["default"]

    def image_path(self, i: int) -> Path:
        rel = Path(self.relpaths[i])
        return rel if rel.is_absolute() else self.root / rel

    def info(self) -> dict[str, Any]:
        """The facts a client of the search API needs (``GET /api/info``)."""
        return {
            "photos": len(self),
            "method": self.method,
            "checkpoint_sha256": self.checkpoint_sha256,
            "index_type": self.manifest["index_type"],
            "built": self.manifest["created"],
            "generation": self.manifest["data_dir"],
            "features": self.features,
            "default_features": self.default_features,
        }

    def describe(self) -> str:
        ck = self.manifest["checkpoint"]
        return (
            f"{len(self):,} photos · method {self.method} · checkpoint {Path(ck['path']).name} "
            f"(sha256 {ck['sha256'][:12]}) · index {self.manifest['index_type']}"
        )

    # ---- queries

    def _batch(self, queries: Sequence[Any]) -> tuple[torch.Tensor, list[str]]:
        tensors, names = [], []
        for i, q in enumerate(queries):
            if isinstance(q, str | os.PathLike):
                p = Path(q)
                if not p.is_file():
                    raise FileNotFoundError(f"query image {p} does not exist")
                try:
                    img = load_rgb(str(p))
                except Exception as err:
                    raise GalleryError(f"cannot read query image {p}: {err}") from err
                tensors.append(self.transform(img))
                names.append(str(q))
            elif isinstance(q, Image.Image):
                tensors.append(self.transform(to_rgb(q)))
                names.append(f"<image {i}>")
            elif isinstance(q, np.ndarray):
                arr = q if q.dtype == np.uint8 else np.clip(q, 0, 255).astype(np.uint8)
                tensors.append(self.transform(to_rgb(Image.fromarray(arr))))
                names.append(f"<array {i}>")
            elif isinstance(q, torch.Tensor):  # already transformed, 3 × H × W
                if q.ndim != 3:
                    raise GalleryError(
                        f"a query tensor must be 3 × H × W (transformed), got {tuple(q.shape)}"
                    )
                tensors.append(q.float())
                names.append(f"<tensor {i}>")
            else:
                raise GalleryError(f"cannot use a {type(q).__name__} as a query image")
        if not tensors:
            raise GalleryError("search needs at least one query image")
        return torch.stack(tensors), names

    @torch.no_grad()
    def encode(self, queries: Sequence[Any]) -> np.ndarray:
        """The query features as the gallery compares them (codes, or L2-normalised ``f``)."""
        x, _ = self._batch(queries)
        return self._encode_batch(x)

    @torch.no_grad()
    def _encode_batch(self, x: torch.Tensor) -> np.ndarray:
        out = self.network(x).cpu().numpy()
        return out.astype(np.float32) if is_codes(self.settings) else normalise(out)

    def search(
        self, queries: Sequence[Any] | Any, k: int = 10, features: str | None = None
    ) -> list[QueryResult]:
        """Top-``k`` gallery items of each query (paths, PIL images, uint8 arrays or transformed tensors),
        ranked as the evaluation ranks (ascending distance, ties to the lower gallery position). ``k``
        larger than the gallery returns all of it. ``features``: ``raw`` / ``proto`` / ``fused``
        (method B; default fused) or ``codes`` (method A)."""
        if not isinstance(queries, list | tuple):
            queries = [queries]
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or int(k) < 1:
            raise GalleryError(f"k must be a positive integer, got {k!r}")
        features = features or self.default_features
        if features not in self.features:
            raise GalleryError(
                f"gallery {self.path} has features {', '.join(self.features)}, not {features!r}"
            )
        x, names = self._batch(queries)  # a bad query fails before the network runs
        q = self._encode_batch(x)
        dist, ind = self._rank(q, min(int(k), len(self)), features)
        results = []
        for qi, name in enumerate(names):
            hits = [
                Hit(
                    rank=r + 1,
                    index=int(i),
                    path=str(self.image_path(int(i))),
                    relpath=self.relpaths[int(i)],
                    distance=float(d),
                    label=self.labels[int(i)],
                )
                for r, (d, i) in enumerate(zip(dist[qi].tolist(), ind[qi].tolist()))
                if i >= 0
            ]
            results.append(QueryResult(query=name, features=features, hits=hits))
        return results

    def _rank(self, q: np.ndarray, k: int, features: str) -> tuple[np.ndarray, np.ndarray]:
        if features == FUSED and self.distance_fused:
            base = base_feature(self.settings)
            if self._proto is None:
                self._proto = prototypes(self.stored, base)
            fn = fused_distance_fn(q, self.stored[base], self._proto, self.settings["fusion_lambda"])
            d = fn(torch.arange(q.shape[0]))
            dist, ind = torch.sort(d, dim=1, stable=True)
            return dist[:, :k].numpy(), ind[:, :k].numpy()
        return search_index(self.indexes[features], q, k)


def _checked_network(
    path: Path, manifest: dict, ckpt: str | os.PathLike | None, *, force: bool, overrides, trust: bool
) -> tuple[Any, str]:
    """``(network, sha256)`` of ``manifest``'s checkpoint (or ``ckpt``): its sha256 checked against the
    manifest's before the file is read, its method against the gallery's."""
    rec = manifest["checkpoint"]
    use = Path(ckpt) if ckpt is not None else Path(rec["path"])
    if not use.is_file():
        raise FileNotFoundError(
            f"checkpoint {use} (recorded in gallery {path}) does not exist: pass --ckpt"
            if ckpt is None
            else f"checkpoint {use} does not exist"
        )
    digest = sha256_file(use)
    if digest != rec["sha256"]:
        msg = (
            f"checkpoint {use} (sha256 {digest[:12]}…) is not the one gallery {path} was built with "
            f"({rec['path']}, sha256 {rec['sha256'][:12]}…)"
        )
        if not force:
            raise GalleryError(msg + ": rebuild the gallery, or pass --force to search anyway")
        print(f"warning: {msg}; searching anyway (--force)", file=sys.stderr)
    raw = read_checkpoint(use, trust=trust)
    cfg = checkpoint_config(raw, use, list(overrides))
    if method_of(cfg).name != manifest["method"]:
        raise GalleryError(
            f"gallery {path} holds a '{manifest['method']}' model's features, but checkpoint {use} is a "
            f"'{method_of(cfg).name}' model: its queries cannot be compared with this gallery"
        )
    return load_network(use, list(overrides), ckpt=raw, cfg=cfg)[1], digest


def _same_network(old: Gallery, manifest: dict, overrides: Sequence[str]) -> bool:
    """``old``'s network is the one ``manifest`` asks for (its checkpoint, method and overrides)."""
    return (
        old.checkpoint_sha256 == manifest["checkpoint"]["sha256"]
        and old.method == manifest["method"]
        and old.overrides == tuple(overrides)
    )


def search_gallery(
    gallery: str | os.PathLike,
    queries: Sequence[str],
    *,
    k: int = 10,
    features: str | None = None,
    ckpt: str | os.PathLike | None = None,
    force: bool = False,
    as_json: bool = False,
    sheet: str | os.PathLike | None = None,
    trust: bool = False,
) -> list[QueryResult]:
    """The ``search`` command: open, search, print a table per query (or one JSON object), draw a
    contact sheet when asked."""
    for q in queries:  # a bad query path fails before the network is loaded
        if not Path(q).is_file():
            raise FileNotFoundError(f"query image {q} does not exist")
    g = Gallery.open(gallery, ckpt, force=force, trust=trust)
    results = g.search(list(queries), k=k, features=features)
    if as_json:
        print(
            json.dumps(
                {
                    "gallery": str(gallery),
                    "method": g.method,
                    "size": len(g),
                    "features": results[0].features,
                    "k": k,
                    "queries": [r.to_dict() for r in results],
                }
            )
        )
    else:
        for r in results:
            print_table(
                f"{r.query} — top {len(r.hits)} of {len(g)} ({r.features})",
                ["rank", "distance", "path", "label"],
                [(h.rank, h.distance, h.relpath, h.label or "") for h in r.hits],
            )
    if sheet:
        contact_sheet(g, results, sheet)
    return results


def contact_sheet(g: Gallery, results: list[QueryResult], out: str | os.PathLike, thumb: int = 128):
    """One row per query: the query, then its hits with rank, distance and label. Written atomically."""

    cols = 1 + max((len(r.hits) for r in results), default=0)
    cap = 28
    sheet = Image.new("RGB", (cols * (thumb + 8) + 8, len(results) * (thumb + cap + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)

    def tile(path: str) -> Image.Image:
        try:
            im = load_rgb(path)
        except Exception:  # noqa: BLE001 - a moved photo is drawn grey
            im = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        im.thumbnail((thumb, thumb))
        return im

    for row, r in enumerate(results):
        y = 8 + row * (thumb + cap + 8)
        q = r.query if Path(r.query).is_file() else None
        if q:
            sheet.paste(tile(q), (8, y))
        draw.rectangle([8, y, 8 + thumb - 1, y + thumb - 1], outline=(0, 90, 200), width=2)
        draw.text((8, y + thumb + 2), "query", fill=(0, 90, 200))
        for c, h in enumerate(r.hits, start=1):
            x = 8 + c * (thumb + 8)
            sheet.paste(tile(h.path), (x, y))
            draw.text((x, y + thumb + 2), f"#{h.rank} {h.distance:.3f}", fill=(0, 0, 0))
            if h.label:
                draw.text((x, y + thumb + 14), h.label[:20], fill=(90, 90, 90))
    atomic_save_image(sheet, out)
    print(f"contact sheet -> {out}")
    return Path(out)
