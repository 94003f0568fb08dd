"""Read back what an offline wandb run logged, from its ``run-<id>.wandb`` file (a test helper).

wandb 0.31 ships the record protobufs (:mod:`wandb.proto.wandb_internal_pb2`) but no Python reader of the
file its Go core writes. The file is a LevelDB-style log:

- a 7-byte file header: ident ``:W&B``, magic ``0xBEE1`` (uint16, little-endian), version ``0`` (uint8);
- then 32 KiB blocks, counted from the start of the file (so the first block holds the file header too).
  A block is a sequence of chunks, each a 7-byte header — checksum (uint32), length (uint16), type (uint8:
  FULL 1, FIRST 2, MIDDLE 3, LAST 4) — and ``length`` bytes of data. A chunk never starts in the last
  6 bytes of a block: those are zero padding, skipped. A record that does not fit in the rest of a block
  is split into FIRST, MIDDLE…, LAST chunks.
- The checksum is the IEEE CRC-32 (``zlib.crc32``) of the type byte followed by the data, as wandb writes
  it (LevelDB itself would use CRC-32C).
- Each whole record is one serialized ``wandb.proto.wandb_internal_pb2.Record``.

    records = read_records(path)             # every Record, in file order
    history = history_rows(path)             # one {key: value} per wandb.log / logger.log_metrics call
    keys = logged_keys(path)                 # every key ever logged to the history

wandb's core writes the file on its own: ``wandb.finish()`` may return before the last records are
on disk. :func:`finished_run_file` waits for the run's ``exit`` record (the last one wandb writes).
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
CHUNK = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a wandb run log, or a chunk in it is broken."""


def _checksum(kind: int, data: bytes) -> int:
    return zlib.crc32(data, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF


def read_chunks(raw: bytes) -> Iterator[bytes]:
    """The data of every whole record in ``raw`` (a ``.wandb`` file's bytes), chunks joined."""
    if len(raw) < HEADER.size:
        raise WandbFileError(f"{len(raw)} bytes: shorter than the file header")
    ident, magic, version = HEADER.unpack_from(raw)
    if (ident, magic, version) != (IDENT, MAGIC, VERSION):
        raise WandbFileError(f"not a wandb run log (header {raw[: HEADER.size]!r})")
    pos, parts = HEADER.size, None
    while pos < len(raw):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # the block's zero trailer
            pos += left
            continue
        if pos + CHUNK.size > len(raw):
            break  # a header cut short: the writer was still running
        checksum, length, kind = CHUNK.unpack_from(raw, pos)
        if (checksum, length, kind) == (0, 0, 0):  # zero padding to the end of the block
            pos += left
            continue
        data = raw[pos + CHUNK.size : pos + CHUNK.size + length]
        if len(data) < length:
            break  # a record cut short: the writer was still running
        if _checksum(kind, data) != checksum:
            raise WandbFileError(f"checksum mismatch in the chunk at byte {pos}")
        pos += CHUNK.size + length
        if kind == FULL:
            yield data
        elif kind == FIRST:
            parts = [data]
        elif kind == MIDDLE and parts is not None:
            parts.append(data)
        elif kind == LAST and parts is not None:
            parts.append(data)
            yield b"".join(parts)
            parts = None
        else:
            raise WandbFileError(f"chunk type {kind} out of order at byte {pos}")


def run_file(run_dir: str | Path) -> Path:
    """The one ``run-*.wandb`` file under ``run_dir`` (a run folder, its ``wandb/`` or an offline-run folder)."""
    found = sorted(Path(run_dir).rglob("run-*.wandb"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one run-*.wandb under {run_dir}, found {len(found)}: {found}")
    return found[0]


def read_records(path: str | Path) -> list[Any]:
    """Every record of the file as a ``wandb_internal_pb2.Record``, in file order."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for data in read_chunks(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(data)
        out.append(record)
    return out


def finished_run_file(run_dir: str | Path, timeout: float = 60.0) -> Path:
    """:func:`run_file`, once the run's ``exit`` record is in it (waits up to ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path = run_file(run_dir)
            if any(r.WhichOneof("record_type") == "exit" for r in read_records(path)):
                return path
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"no finished wandb run file under {run_dir} after {timeout:.0f} s")
        time.sleep(0.2)


def _put(row: dict[str, Any], item: Any) -> None:
    """An item's value into ``row``: a flat ``key``, or under its ``nested_key`` path (wandb's core splits a
    logged dict, e.g. an image's description, into one item per leaf: ``["val/retrieval_grid", "_type"]``)."""
    path = list(item.nested_key) or [item.key]
    for part in path[:-1]:
        row = row.setdefault(part, {})
    row[path[-1]] = json.loads(item.value_json)


def history_rows(path: str | Path) -> list[dict[str, Any]]:
    """One ``{key: value}`` per history record (one ``run.log`` call), values decoded from their JSON.
    Media (images, tables, histograms) are their JSON descriptions (a dict with ``_type``)."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item)
            rows.append(row)
    return rows


def logged_keys(path: str | Path) -> set[str]:
    """Every key logged to the run's history."""
    return {key for row in history_rows(path) for key in row}


def config_of(path: str | Path) -> dict[str, Any]:
    """The run's config as logged (later updates of a key replace earlier ones)."""
    out: dict[str, Any] = {}
    for record in read_records(path):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                _put(out, item)
    return out
