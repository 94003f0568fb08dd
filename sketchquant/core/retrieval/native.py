"""The compiled ranking kernel (``_ranks.c``): exact ranks of the relevant items in one pass per row, and
the per-query metric values from them.

The engine's torch ranking (:func:`.engine.relevant_ranks`) runs about ten whole-block passes over the
keys; this C kernel runs one, which is what brings the exact metrics close to the cost of the matrix
product (``benchmarks/eval_speed.py``). It is plain C loaded with :mod:`ctypes` (no Python API, the GIL
is released during the call), compiled on first use with the system's C compiler (``$CC`` or ``cc``,
about a second) into ``$SKETCHQUANT_CACHE`` (default ``~/.cache/sketchquant``), named by the hash of the
source, compiler and platform, written to a temporary file and renamed into place.

Without a compiler the engine keeps the torch ranking (same numbers, slower) after one warning;
``SKETCHQUANT_NATIVE=0`` turns the kernel off. Only float32 keys on the CPU use it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import torch

__all__ = ["available", "relevant_ranks", "rank_metrics"]

_SOURCE = Path(__file__).with_name("_ranks.c")
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_TRIED = False
#: bucket indices and counts are int32 in the kernel
MAX_ITEMS = 2**29


class NativeKernelWarning(UserWarning):
    """The compiled ranking kernel could not be built: the exact metrics run slower (same numbers)."""


def _cache_dir() -> Path:
    root = os.environ.get("SKETCHQUANT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sketchquant"
    )
    return Path(root)


def _compile(cc: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        cmd = [cc, "-O3", "-fPIC", "-shared", "-ffp-contract=off", "-std=c99", str(_SOURCE), "-o", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip().splitlines()[-1:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL | None:
    global _LIB, _TRIED
    with _LOCK:
        if _TRIED:
            return _LIB
        _TRIED = True
        if os.environ.get("SKETCHQUANT_NATIVE", "1") == "0":
            return None
        cc = os.environ.get("CC") or "cc"
        try:
            if shutil.which(cc) is None:
                raise RuntimeError(f"no C compiler {cc!r} on PATH (set $CC)")
            tag = hashlib.sha256(
                _SOURCE.read_bytes() + f"{cc}|{platform.machine()}|{platform.system()}".encode()
            ).hexdigest()[:16]
            lib_path = _cache_dir() / f"ranks-{tag}.so"
            if not lib_path.is_file():
                _compile(cc, lib_path)
            lib = ctypes.CDLL(str(lib_path))
            fn = lib.sq_relevant_ranks
            fn.restype = ctypes.c_int
            p, i64 = ctypes.c_void_p, ctypes.c_int64
            fn.argtypes = [p, p, i64, i64, i64, p, p, i64, p]
            lib.sq_rank_metrics.restype = ctypes.c_int
            lib.sq_rank_metrics.argtypes = [p, i64, i64, p, i64, p, p, p]
            _LIB = lib
        except Exception as err:  # noqa: BLE001 - any failure: keep the torch ranking
            warnings.warn(
                f"the compiled ranking kernel is not available ({err}); the exact metrics use the torch "
                "ranking: the same numbers, several times slower",
                NativeKernelWarning,
                stacklevel=3,
            )
        return _LIB


def available(n_gallery: int = 0) -> bool:
    """Whether the kernel is loaded (compiling it on the first call) and takes ``n_gallery`` items."""
    return n_gallery < MAX_ITEMS and _load() is not None


def relevant_ranks(
    keys: torch.Tensor, cols: torch.Tensor, n_rel: torch.Tensor, offset: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`.engine.relevant_ranks` for float32 CPU keys: ``m × L`` int64 ascending 1-based ranks under
    (key, column), padded with ``N + 1``. With ``offset`` (``N`` float32) the keys are ``offset − keys``,
    subtracted as the kernel reads them (the same floats as ``torch.sub``)."""
    lib = _load()
    if lib is None:
        raise RuntimeError("the compiled ranking kernel is not available")
    if keys.dtype != torch.float32 or keys.device.type != "cpu" or keys.stride(1) != 1:
        raise ValueError("the compiled ranking kernel needs row-contiguous float32 keys on the CPU")
    if keys.shape[1] >= MAX_ITEMS:
        raise ValueError(f"the compiled ranking kernel takes galleries below {MAX_ITEMS:,} items")
    m, n = keys.shape
    if offset is not None:
        if offset.dtype != torch.float32 or offset.device.type != "cpu" or offset.shape != (n,):
            raise ValueError(
                f"the key offset must be {n} float32 values on the CPU, got {tuple(offset.shape)}"
            )
        offset = offset.contiguous()
    cols = cols.to(torch.int64).contiguous()
    n_rel = n_rel.to(torch.int64).contiguous()
    L = cols.shape[1]
    out = torch.empty(m, L, dtype=torch.int64)
    if m == 0 or L == 0:
        return out
    off = None if offset is None else offset.data_ptr()
    rc = lib.sq_relevant_ranks(
        keys.data_ptr(), off, m, n, keys.stride(0), cols.data_ptr(), n_rel.data_ptr(), L, out.data_ptr()
    )
    if rc == -2:  # checked in the kernel, before any read: a mask over all columns cost 8 % of the ranking
        raise ValueError(f"relevant columns must lie in 0..{n - 1}")
    if rc != 0:
        raise MemoryError("the compiled ranking kernel ran out of memory")
    return out


def rank_metrics(
    ranks: torch.Tensor, n_rel: torch.Tensor, cutoffs: list[int], kinds: list[int]
) -> torch.Tensor:
    """Per-query metric values, ``m × len(cutoffs)`` float64, from the ranks of :func:`relevant_ranks`:
    the metric ``kinds[t]`` at cut-off ``cutoffs[t]`` (numbered as in :func:`.engine.metric_specs`), the
    same bits as :func:`.engine.per_query_metrics`."""
    lib = _load()
    if lib is None:
        raise RuntimeError("the compiled ranking kernel is not available")
    if len(cutoffs) != len(kinds) or any(k not in (0, 1, 2, 3) for k in kinds) or min(cutoffs, default=1) < 1:
        raise ValueError(f"cut-offs {cutoffs} (each ≥ 1) and metric kinds {kinds} (0–3) must pair up")
    ranks = ranks.to(torch.int64).contiguous()
    n_rel = n_rel.to(torch.int64).contiguous()
    m, L = ranks.shape
    kk = torch.tensor(cutoffs, dtype=torch.int64)
    kind = torch.tensor(kinds, dtype=torch.int32)
    out = torch.empty(m, len(cutoffs), dtype=torch.float64)
    if m and len(cutoffs):
        rc = lib.sq_rank_metrics(
            ranks.data_ptr(),
            m,
            L,
            n_rel.data_ptr(),
            len(cutoffs),
            kk.data_ptr(),
            kind.data_ptr(),
            out.data_ptr(),
        )
        if rc != 0:
            raise MemoryError("the compiled ranking kernel ran out of memory")
    return out
