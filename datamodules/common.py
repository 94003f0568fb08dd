"""Parts both datamodules share: the sample dataset, image checking, samplers, loaders, error texts."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sketchquant.core.batch import make_sample
from sketchquant.core.io import atomic_write_text

from .lists import IMAGE_EXTENSIONS, list_class_dirs, list_images  # noqa: F401 - re-exported
from .transforms import load_rgb

log = logging.getLogger("sketchquant.data")

CHECK_CACHE = ".sketchquant_image_check.json"
BAD_IMAGE_POLICIES = ("skip", "error")


class BadImageWarning(UserWarning):
    """Some image files could not be read and were left out."""


def stable_rng(*keys: Any) -> np.random.Generator:
    """A numpy RNG from a tuple of ints and strings; strings hash with crc32 (stable across runs)."""
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng([abs(i) for i in ints])


def normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", "_", name.strip().lower())


def match_classes(wanted: Sequence[str], available: Sequence[str], source: str, where: str) -> list[str]:
    """Map class names from a list onto names on disk (exact, else ignoring case and ``-``/``_``/space).

    Raises ``ValueError`` naming every class that is not there.
    """
    avail = set(available)
    by_norm: dict[str, list[str]] = {}
    for a in available:
        by_norm.setdefault(normalise_name(a), []).append(a)
    out, missing = [], []
    for w in wanted:
        if w in avail:
            out.append(w)
        elif len(by_norm.get(normalise_name(w), [])) == 1:
            out.append(by_norm[normalise_name(w)][0])
        else:
            missing.append(w)
    if missing:
        shown = ", ".join(sorted(available)[:10]) + (" ..." if len(available) > 10 else "")
        raise ValueError(
            f"class(es) {missing} from {source} not found on disk under {where} "
            f"({len(available)} classes there: {shown})"
        )
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------------------
# the dataset


class SampleDataset(Dataset):
    """Images from a list of paths; yields :func:`sketchquant.core.batch.make_sample` dicts.

    ``labels`` are ints (single-label) or lists of class ids (multi-label; returned as a float32 multi-hot
    vector of ``num_classes``). ``transforms`` maps a domain to its transform.
    """

    def __init__(
        self,
        paths: Sequence[str],
        labels: Sequence[Any],
        domains: Sequence[int],
        indices: Sequence[int],
        transforms: dict[int, Callable],
        *,
        multi_label: bool = False,
        num_classes: int | None = None,
    ) -> None:
        if not (len(paths) == len(labels) == len(domains) == len(indices)):
            raise ValueError("paths, labels, domains and indices must have the same length")
        self.paths = list(paths)
        self.labels = list(labels)
        self.domains = np.asarray(domains, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transforms = transforms
        self.multi_label = multi_label
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.paths)

    def positions(self, domain: int) -> np.ndarray:
        return np.flatnonzero(self.domains == domain)

    def label(self, pos: int) -> torch.Tensor:
        """The label of sample ``pos`` as the batches carry it: an ``int64`` class id, or a ``float32``
        multi-hot vector of ``num_classes`` (multi-label)."""
        lab = self.labels[pos]
        if self.multi_label:
            v = torch.zeros(int(self.num_classes), dtype=torch.float32)
            if len(lab):
                v[torch.as_tensor(list(lab), dtype=torch.long)] = 1.0
            return v
        return torch.tensor(int(lab), dtype=torch.int64)

    def labels_tensor(self) -> torch.Tensor:
        """Every sample's :meth:`label`, stacked (``N`` ids or ``N × num_classes`` multi-hot)."""
        if not len(self):
            if self.multi_label:
                return torch.zeros((0, int(self.num_classes)), dtype=torch.float32)
            return torch.zeros(0, dtype=torch.int64)
        return torch.stack([self.label(i) for i in range(len(self))])

    #: when set (training sets), random augmentation of sample ``pos`` in epoch ``e`` is seeded with
    #: ``(augment_seed, e, pos)``: the same images whatever the worker count, process count or resume point.
    augment_seed: int | None = None

    def __getitem__(self, key: int) -> dict:
        # samplers of training sets tag a position with its epoch: key = pos + epoch * len(self)
        epoch, pos = divmod(int(key), len(self.paths))
        domain = int(self.domains[pos])
        image = load_rgb(self.paths[pos])
        if self.augment_seed is None:
            image = self.transforms[domain](image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(
                    int(np.random.SeedSequence([self.augment_seed, epoch, pos]).generate_state(1)[0])
                )
                image = self.transforms[domain](image)
        return make_sample(image, self.label(pos), domain, int(self.indices[pos]))


class ResumableSampler:
    """Mid-epoch resume for a sampler whose order depends only on (seed, epoch, rank): after
    :meth:`skip_next` ``(n)`` the next ``__iter__`` leaves out the first ``n`` indices of the epoch's order
    (what an interrupted run already trained on); later epochs start from the beginning again."""

    _skip = 0

    def skip_next(self, n: int) -> None:
        self._skip = max(0, int(n))

    def _skipping(self, order: Iterator[int]) -> Iterator[int]:
        n, self._skip = self._skip, 0
        return itertools.islice(order, n, None) if n else order


class EpochTaggedSampler(ResumableSampler, DistributedSampler):
    """A shuffling ``DistributedSampler`` (also for one process) whose positions carry the epoch
    (``pos + epoch * len(dataset)``) for :class:`SampleDataset`'s seeded augmentation."""

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        return self._skipping(iter(int(i) + self.epoch * n for i in super().__iter__()))


# ------------------------------------------------------------------------------------------------------
# image checking


def _check_file(path: str) -> str | None:
    """``None`` if the file opens, verifies and decodes; else the reason."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the file unusable; decoding catches truncation
            im.load()
    except FileNotFoundError:
        return "missing"
    except Exception as e:  # noqa: BLE001 - any failure to read is a bad image
        return f"{type(e).__name__}: {e}"
    return None


def check_images(
    paths: Sequence[str], cache_dir: str | os.PathLike | None, workers: int | None = None
) -> dict:
    """Return ``{path: reason}`` for the unreadable files among ``paths``.

    Results are cached in ``<cache_dir>/.sketchquant_image_check.json`` keyed by path, size and mtime, so
    a second run only stats the files. An unwritable ``cache_dir`` just means no cache.
    """
    cache_file = Path(cache_dir) / CHECK_CACHE if cache_dir is not None else None
    cache: dict[str, list] = {}
    if cache_file is not None and cache_file.exists():
        try:
            data = json.loads(cache_file.read_text())
            if data.get("version") == 1:
                cache = data["files"]
        except (OSError, ValueError, KeyError):
            cache = {}
    bad: dict[str, str] = {}
    todo: list[tuple[str, list]] = []
    fresh: dict[str, list] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            bad[p] = "missing"
            continue
        key = [st.st_size, st.st_mtime_ns]
        hit = cache.get(p)
        if hit is not None and hit[:2] == key:
            fresh[p] = hit
            if hit[2] is not None:
                bad[p] = hit[2]
        else:
            todo.append((p, key))
    if todo:
        n = workers or min(8, (os.cpu_count() or 1) * 2)
        with ThreadPoolExecutor(max_workers=n) as pool:
            reasons = list(pool.map(_check_file, [p for p, _ in todo], chunksize=64))
        for (p, key), reason in zip(todo, reasons):
            fresh[p] = key + [reason]
            if reason is not None:
                bad[p] = reason
        if cache_file is not None:
            cache.update(fresh)
            try:
                atomic_write_text(cache_file, json.dumps({"version": 1, "files": cache}))
            except OSError as e:
                log.debug("image check cache not written (%s)", e)
    return bad


def apply_bad_image_policy(bad: dict[str, str], policy: str, total: int) -> set[str]:
    """Report bad files; raise (``error``) or warn and return them to be skipped (``skip``)."""
    if policy not in BAD_IMAGE_POLICIES:
        raise ValueError(f"on_bad_image must be one of {BAD_IMAGE_POLICIES}, got {policy!r}")
    if not bad:
        return set()
    first = sorted(bad)[:5]
    detail = "; ".join(f"{p} ({bad[p]})" for p in first) + (" ..." if len(bad) > len(first) else "")
    msg = f"{len(bad)} of {total} image files are unreadable: {detail}"
    if policy == "error":
        raise ValueError(msg + " (on_bad_image='error'; use 'skip' to leave them out)")
    warnings.warn(msg + " - skipped (on_bad_image='skip')", BadImageWarning, stacklevel=3)
    log.warning("%s - skipped", msg)
    return set(bad)


# ------------------------------------------------------------------------------------------------------
# distribution and loaders


def dist_info(trainer: Any) -> tuple[int, int]:
    """``(global_rank, world_size)`` from a Trainer, ``(0, 1)`` without one."""
    if trainer is None:
        return 0, 1
    try:
        return int(trainer.global_rank), max(1, int(trainer.world_size))
    except Exception:  # noqa: BLE001 - a half-built trainer
        return 0, 1


def global_seed() -> int:
    try:
        return int(os.environ.get("PL_GLOBAL_SEED", 0))
    except ValueError:
        return 0


class MixedDomainSampler(ResumableSampler, DistributedSampler):
    """Flat index order whose every ``batch_size`` consecutive items hold a fixed sketch / photo mix.

    Each batch has ``round(batch_size * sketch_fraction)`` sketches and the rest photos. The epoch length is
    set by the photos (by the sketches if a batch holds no photos): every photo is used about once per
    epoch, sketches are cycled (reshuffled each pass) to fill their share. Use with
    ``DataLoader(dataset, batch_size=batch_size, sampler=this, drop_last=True)``.

    Rank-aware by itself: with ``num_replicas`` > 1 each rank gets a disjoint shard of the photos (and of
    the sketches) and the same number of batches. It subclasses ``DistributedSampler`` so Lightning leaves it
    alone (no sampler injection, whatever ``use_distributed_sampler`` says) and calls :meth:`set_epoch`.
    """

    def __init__(
        self,
        dataset: Dataset,
        sketch_positions: Sequence[int],
        photo_positions: Sequence[int],
        batch_size: int,
        sketch_fraction: float = 1 / 3,
        *,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= sketch_fraction <= 1.0:
            raise ValueError(f"sketch_fraction must be in [0, 1], got {sketch_fraction}")
        self.sketches = np.asarray(sketch_positions, dtype=np.int64)
        self.photos = np.asarray(photo_positions, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.n_sketch = int(round(batch_size * sketch_fraction))
        self.n_photo = self.batch_size - self.n_sketch
        if self.n_sketch and not len(self.sketches):
            raise ValueError("the training split has no sketches but the batch mix asks for some")
        if self.n_photo and not len(self.photos):
            raise ValueError("the training split has no photos but the batch mix asks for some")
        lead, per_batch = (self.photos, self.n_photo) if self.n_photo else (self.sketches, self.n_sketch)
        per_rank = max(1, len(lead) // self.num_replicas)
        self.num_batches = max(1, per_rank // per_batch)
        self.num_samples = self.num_batches * self.batch_size
        self.total_size = self.num_samples * self.num_replicas

    def __len__(self) -> int:
        return self.num_samples

    def _draw(self, pool: np.ndarray, count: int, shared: np.random.Generator, own: np.random.Generator):
        if count == 0:
            return np.empty(0, dtype=np.int64)
        perm = pool[shared.permutation(len(pool))]
        shard = perm[self.rank :: self.num_replicas]
        if len(shard) == 0:  # fewer items than ranks: every rank cycles through all of them
            shard = perm
        out = [shard]
        while sum(len(x) for x in out) < count:  # cycle, reshuffled each pass
            out.append(shard[own.permutation(len(shard))])
        return np.concatenate(out)[:count]

    def __iter__(self) -> Iterator[int]:
        shared = np.random.default_rng([self.seed, self.epoch, 17])  # same on every rank
        own = np.random.default_rng([self.seed, self.epoch, 29, self.rank])
        ph = self._draw(self.photos, self.num_batches * self.n_photo, shared, own)
        sk = self._draw(self.sketches, self.num_batches * self.n_sketch, shared, own)
        order = []
        for b in range(self.num_batches):
            batch = np.concatenate(
                [
                    sk[b * self.n_sketch : (b + 1) * self.n_sketch],
                    ph[b * self.n_photo : (b + 1) * self.n_photo],
                ]
            )
            order.extend(batch[own.permutation(len(batch))].tolist())
        offset = self.epoch * len(self.dataset)  # epoch tag for SampleDataset's seeded augmentation
        return self._skipping(iter(i + offset for i in order))


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    pin_memory: bool,
    persistent_workers: bool,
    sampler: Any = None,
    shuffle: bool = False,
    drop_last: bool = False,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle if sampler is None else False,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=bool(persistent_workers and num_workers > 0),
    )


def eval_sampler(dataset: Dataset, trainer: Any) -> DistributedSampler | None:
    """Unshuffled shard per rank under DDP (padded by repetition: drop duplicates by ``index``)."""
    rank, world = dist_info(trainer)
    if world <= 1:
        return None
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False, drop_last=False)


def tree(lines: Sequence[str]) -> str:
    return "\n".join("    " + ln for ln in lines)
