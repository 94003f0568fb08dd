"""Render every benchmark figure of the documentation from the results files, so no figure is typed.

    python scripts/render_docs.py            # write docs/benchmarks.md and README.md's figure blocks
    python scripts/render_docs.py --check    # exit 1, naming each stale file and block (tests/test_docs.py)

What it renders:

- ``docs/benchmarks.md``, entirely: an intro, then one section per results file under
  ``benchmarks/results/`` (``*.json``): the file's tables, by the render function of its kind
  (:data:`RENDERERS`; a file's kind is the longest registered name its stem starts with, so
  ``search_speed_build.json`` is a ``search_speed`` file), each section ending with the command, commit,
  date, machine and load recorded in the file (``benchmarks/common.py``; "not recorded" for a file
  written before that record existed). A kind without a renderer gets a plain list of its top-level
  figures.
- named blocks of ``README.md``, between ``<!-- rendered:NAME -->`` and ``<!-- /rendered:NAME -->``
  (:data:`BLOCKS`): ``configs`` (every choice under ``configs/``, per group, with the first comment line of
  its file), ``make_train`` (the default run's mean ± std, from ``make_train.json``),
  ``quantization_claims`` (method A's claims, frozen and fine-tuned), ``folder_recipe``, ``components``
  and one block per study of :data:`SEEN_STUDIES` (the studies of method B on small real data, from
  ``study_*.json``) and ``headlines`` (one line per headline figure, each only if its results file exists,
  linking into ``docs/benchmarks.md``). A block whose markers are
  absent is not written; a marked block with a name not in :data:`BLOCKS` is left as it is (``--check``
  notes it); a marker opened and not closed is an error.

The rendering is deterministic: the same files give the same bytes. Numbers are formatted one way
throughout: mAP and precision with 3 decimals, ratios as ``1.27×``, seconds (and other measured
quantities) with 3 significant digits.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = "benchmarks/results"
BENCHMARKS_MD = "docs/benchmarks.md"
README = "README.md"
NOT_RECORDED = "not recorded"
#: the config groups in the order the configs block lists them (any other group follows, sorted)
GROUPS = ("experiment", "trainer", "logger", "data", "model", "sweeps")

Doc = dict[str, Any]
#: benchmark scales as the text names them
SCALES = {"tuberlin": "TU-Berlin", "quickdraw": "QuickDraw"}


# ------------------------------------------------------------------------------------------------
# number formats (one per kind of number)


def sig(x: float | None, digits: int = 3) -> str:
    """``digits`` significant digits, thousands separated: 0.247, 20.5, 1.00, 116, 9,450."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def p_cell(c: dict) -> str:
    """A comparison's p-value, 2 significant digits; ``< 1/resamples`` at the sign-flip test's floor
    ``1/(resamples + 1)``, where no resample was as extreme (docs/comparing.md)."""
    resamples = c.get("resamples")
    if resamples and c["p_value"] <= (1 + 1e-9) / (resamples + 1):
        return f"< {sig(1 / resamples, 1)}"
    return sig(c["p_value"], 2)


def score(x: float | None) -> str:
    """mAP, precision, recall: 3 decimals."""
    return "" if x is None else f"{x:.3f}"


def pm(mean: float | None, std: float | None) -> str:
    return "" if mean is None else f"{mean:.3f} ± {std or 0.0:.3f}"


def ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}×"


def pct(x: float | None) -> str:
    return "" if x is None else f"{x:+.1f} %".replace("-", "−")


def count(n: float | None) -> str:
    return "" if n is None else f"{int(round(n)):,}"


def memory(mib: float | None) -> str:
    """A resident-memory figure recorded in MiB (``ru_maxrss`` / 1024, ``VmHWM`` / 1024)."""
    if mib is None:
        return ""
    return f"{sig(mib / 1024)} GiB" if mib >= 1024 else f"{sig(mib)} MiB"


def size(x: float) -> str:
    """A byte count that may be fractional (bit-packed sizes)."""
    return count(x) if float(x).is_integer() else sig(x)


def plural(n: Any, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def seed_list(items: list[Any]) -> str:
    """``seed 0`` / ``seeds 0, 1, 2``."""
    return ("seed " if len(items) == 1 else "seeds ") + ", ".join(str(s) for s in items)


def plain(value: Any) -> str:
    """A setting as text: lists joined, booleans as yes / no."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(plain(v) for v in value)
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return "" if v is None else str(v).replace("|", "\\|")

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def anchor(stem: str) -> str:
    return f'<a id="{stem}"></a>'


# ------------------------------------------------------------------------------------------------
# what a results file records besides its figures (benchmarks/common.py)


def recorded(doc: Doc) -> str:
    """The closing line of a section: command, commit, date, machine and load, as the file records them."""

    def field(key: str, code: bool = False) -> str:
        value = doc.get(key)
        if value in (None, ""):
            return NOT_RECORDED
        return f"`{value}`" if code else str(value)

    machine = doc.get("machine") if isinstance(doc.get("machine"), dict) else {}
    cores, cpu = machine.get("cores"), machine.get("cpu")
    where = f"{cores} cores, {cpu}" if cores and cpu else NOT_RECORDED
    before, after = doc.get("load_before"), doc.get("load_after")
    load = f"{before} before, {after} after" if before is not None and after is not None else NOT_RECORDED
    return (
        f"*Recorded with these figures:* command {field('command', code=True)}; commit "
        f"{field('commit', code=True)}; date {field('date')}; machine {where}; 1-minute load average "
        f"{load}."
    )


# ------------------------------------------------------------------------------------------------
# one render function per kind of results file: doc -> markdown lines (no heading, no closing line)


def render_eval_speed(doc: Doc, path: Path) -> list[str]:
    rows = []
    for r in doc.get("results", []):
        if "error" in r:
            rows.append([r.get("scale"), f"error: {r['error']}"] + [""] * 7)
            continue
        ddp = r.get("ddp") or {}
        two = (
            f"{sig(ddp['seconds'])} ({'equal' if ddp.get('equal_to_one_process') else 'NOT equal'})"
            if ddp
            else ""
        )
        load = r.get("load_avg_1min_before_after") or []
        rows.append(
            [
                SCALES.get(r["scale"], r["scale"]),
                f"{count(r['n_query'])} × {count(r['n_gallery'])}",
                sig(r["bare_seconds"]),
                f"{sig(r['sbir_seconds'])} ({ratio(r['sbir_ratio'])})",
                f"{sig(r['hashing_seconds'])} ({ratio(r['hashing_ratio'])})",
                memory(r.get("peak_rss_mb")),
                two,
                f"{r['max_abs_diff_vs_reference']:.1e}",
                " → ".join(str(x) for x in load),
            ]
        )
    out = table(
        [
            "scale",
            "queries × gallery",
            "bare matmul s",
            "SBIR s (÷ bare)",
            "hashing s (÷ bare)",
            "peak memory",
            "2 processes s (= 1 process)",
            "max abs diff vs reference",
            "load during",
        ],
        rows,
    )
    gpu = [r for r in doc.get("results", []) if r.get("gpu")]
    for r in gpu:
        g = r["gpu"]
        out += [
            "",
            f"GPU ({g['name']}), {r['scale']}: SBIR {sig(g['sbir_seconds'])} s, bare product "
            f"{sig(g['bare_seconds'])} s ({ratio(g['sbir_ratio'])}); equal to the CPU numbers: "
            f"{'yes' if g['equal_to_cpu'] else 'no'}.",
        ]
    repeats = next((r.get("repeats") for r in doc.get("results", []) if r.get("repeats")), None)
    if repeats:
        out += [
            "",
            f"Each metric time is the median of {plural(repeats, 'run')}; the yardstick is the bare chunked "
            f"float32 product's fastest of {2 * repeats} runs in the same process (`benchmarks/eval_speed.py`).",
        ]
    return out


def render_search_speed(doc: Doc, path: Path) -> list[str]:
    out: list[str] = []
    builds = doc.get("build") or []
    if builds:
        out += table(
            ["images", "photo px", "input px", "batch", "build images/s", "bare forward images/s", "ratio"],
            [
                [
                    count(b["images"]),
                    b.get("photo_size"),
                    "×".join(str(x) for x in b.get("input_size", [])),
                    b.get("batch_size"),
                    sig(b["build_images_per_s"]),
                    sig(b["forward_images_per_s"]),
                    f"{b['ratio']:.2f}",
                ]
                for b in builds
            ],
        )
    queries = doc.get("query") or []
    if queries:
        out += [""] if out else []
        rows = []
        for q in queries:
            if "error" in q:
                rows.append([count(q["size"]), q["type"], q["error"], "", "", ""])
                continue
            e2e = f"{sig(q['query_ms_p50'])} / {sig(q['query_ms_p99'])}" if "query_ms_p50" in q else ""
            rows.append(
                [
                    count(q["size"]),
                    q["type"],
                    e2e,
                    f"{sig(q['search_ms_p50'])} / {sig(q['search_ms_p99'])}",
                    "" if q.get("recall_at_10") is None else f"{q['recall_at_10']:.2f}",
                    count(q["bytes_per_photo_total"]),
                ]
            )
        out += table(
            [
                "photos",
                "index",
                "one sketch p50 / p99 ms (decode + forward + search)",
                "search p50 / p99 ms",
                "recall@10 vs flat",
                "bytes / photo",
            ],
            rows,
        )
    return out


def render_train_throughput(doc: Doc, path: Path) -> list[str]:
    rows = []
    for r in doc.get("results", []):
        m = {k: v["median"] for k, v in r["images_per_second"].items()}
        rows.append(
            [
                r["experiment"],
                r["batch_size"],
                r["image_size"],
                sig(m["bare_backbone"]),
                sig(m["same_work"]),
                sig(m["lightning"]),
                pct(r["overhead_pct"]),
                pct(r["vs_bare_backbone_pct"]),
                sig(m["data_pipeline"]),
                ratio(r["data_headroom"]),
            ]
        )
    out = table(
        [
            "experiment",
            "batch",
            "px",
            "bare",
            "same work",
            "Lightning",
            "overhead vs same work",
            "vs bare",
            "data pipeline",
            "headroom",
        ],
        rows,
    )
    s = doc.get("settings") or {}
    env = doc.get("environment") or doc.get("machine") or {}
    threads = env.get("torch_threads")
    out += [
        "",
        f"Images per second, medians of {plural(s.get('repeats', '?'), 'interleaved repeat')} of "
        f"{plural(s.get('batches', '?'), 'timed step')} (after {plural(s.get('warmup', '?'), 'warm-up step')})"
        + (f", {threads} torch thread(s)" if threads else "")
        + ". Overhead = same work ÷ Lightning − 1 (target ≤ 10 %); headroom = data pipeline ÷ Lightning "
        "(target ≥ 2×).",
    ]
    return out


def render_quantization_claims(doc: Doc, path: Path) -> list[str]:
    meta = doc.get("meta") or {}
    seeds = meta.get("seeds") or []
    rows = [
        [
            r["claim"],
            r["name"],
            size(r["bytes"]),
            pm(r["mean"], r["std"]) if len(r.get("per_seed", [])) > 1 else score(r["mean"]),
            r.get("note", ""),
        ]
        for r in doc.get("rows", [])
    ]
    out = table(["claim", "features", "bytes / image", "mAP@all", "note"], rows)
    out += [
        "",
        f"{meta.get('data_config', '?')}, {meta.get('mode', '?')} mode, "
        f"{meta.get('epochs') or 'the experiment’s'} epochs, "
        f"seeds {', '.join(str(s) for s in seeds)} (mean ± std over seeds); chance (random ranking) "
        f"mAP@all {score(meta.get('chance_map_all'))}; {meta.get('protocol', '')}.",
    ]
    png = path.with_suffix(".png")
    if png.is_file():
        out += ["", f"![mAP@all against bytes per image](../{RESULTS}/{png.name})"]
    return out


#: the ablation's variants, as the table names them
ABLATION_LABELS = {
    "floor": "ImageNet init, no training (floor)",
    "ce": "CE only",
    "ce+kd": "CE + KD",
    "ce+da": "CE + DA",
    "ce+kd+da": "CE + KD + DA (full)",
}


def render_zs_sbir_ablation(doc: Doc, path: Path) -> list[str]:
    cols = ("raw/map_all", "proto/map_all", "fused/map_all", "raw/p_100")
    rows = []
    for variant, row in (doc.get("table") or {}).items():
        rows.append([ABLATION_LABELS.get(variant, variant)] + [pm(*row[c]) if c in row else "" for c in cols])
    out = table(["variant", "mAP@all raw", "mAP@all proto", "mAP@all fused", "P@100 raw"], rows)
    seeds = doc.get("seeds") or []
    epochs = doc.get("epochs")
    out += [
        "",
        f"Seeds {', '.join(str(s) for s in seeds)}, mean ± std on the unseen classes; "
        f"{f'{epochs} epochs per run' if epochs else 'the experiment’s epochs'}"
        + (f", overrides `{' '.join(doc['overrides'])}`" if doc.get("overrides") else "")
        + f"; chance mAP@all {score(doc.get('chance_map_all'))}.",
    ]
    grid = doc.get("grid") or []
    if grid:
        out += [
            "",
            f"PQ prototypes on the full method's `last.ckpt` (seed {seeds[0] if seeds else '?'}), mAP@all:",
            "",
        ]
        out += table(
            ["M", "K", "prototype", "fused"],
            [[g["m"], g["k"], score(g.get("proto/map_all")), score(g.get("fused/map_all"))] for g in grid],
        )
    return out


def render_cli_start(doc: Doc, path: Path) -> list[str]:
    rows = [
        [
            f"`{c['name']}`",  # the full commands name temporary files; benchmarks/cli_start.py has them
            sig(c["seconds"]),
            ratio(c["ratio"]),
            "" if c.get("goal") is None else f"≤ {c['goal']:.1f}×",
            "" if c.get("met") is None else ("yes" if c["met"] else "no"),
        ]
        for c in doc.get("commands", [])
    ]
    out = table(["command", "median s", f"÷ `{doc.get('baseline', 'import torch')}`", "goal", "met"], rows)
    qd = doc.get("quickdraw")
    if qd:
        out += [
            "",
            f"QuickDraw scale (`{qd['command']}`, {' × '.join(count(x) for x in qd['shape'])}): "
            f"{sig(qd['eval_features_seconds'])} s against the bare product's {sig(qd['bare_seconds'])} s: "
            f"{ratio(qd['ratio'])} (goal ≤ {qd['goal']:.2f}×).",
        ]
    return out


def _train_rows(doc: Doc) -> list[list[str]]:
    """``features | mAP@all | P@100`` rows of a make_train file: chance, before training, and the mean ±
    std of the raw, prototype and fused features over the seeds."""
    mean, std, settings = doc.get("mean") or {}, doc.get("std") or {}, doc.get("settings") or {}
    m, lam = settings.get("eval.pq_m"), settings.get("eval.fusion_lambda")
    k = mean.get("test/proto/pq_k", settings.get("eval.pq_k"))  # the K the gallery supported
    k = int(k) if isinstance(k, float) and k.is_integer() else k
    labels = {
        "test/": "trained, raw",
        "test/proto/": f"trained, PQ prototypes (M={m}, K={k})" if m else "trained, PQ prototypes",
        "test/fused/": f"trained, fused (λ={lam})" if lam is not None else "trained, fused",
    }
    rows = [["chance (random ranking)", score(mean.get("test/chance_map_all")), ""]]
    before = doc.get("untrained")
    if before and "test/map_all" in before:
        label = "same network before training (raw; `trainer.max_epochs=0`)"
        rows.append([label, score(before["test/map_all"]), score(before.get("test/p_100"))])
    for prefix, label in labels.items():
        if prefix + "map_all" in mean:
            rows.append(
                [
                    label,
                    pm(mean[prefix + "map_all"], std.get(prefix + "map_all")),
                    pm(mean.get(prefix + "p_100"), std.get(prefix + "p_100")),
                ]
            )
    return rows


def render_make_train(doc: Doc, path: Path) -> list[str]:
    runs = doc.get("runs") or []
    out = table(["features", "mAP@all", "P@100"], _train_rows(doc))
    out += ["", "Each run:", ""]
    out += table(
        ["seed", "seconds", "raw mAP@all", "prototypes mAP@all", "fused mAP@all"],
        [
            [
                r["seed"],
                sig(r["seconds"]),
                score(r.get("test/map_all")),
                score(r.get("test/proto/map_all")),
                score(r.get("test/fused/map_all")),
            ]
            for r in runs
        ],
    )
    settings = doc.get("settings") or {}
    data = doc.get("data") or {}
    out += [
        "",
        f"`sketchquant train {doc.get('experiment', 'zs_sbir')}`"
        + (f" with `{' '.join(doc['overrides'])}`" if doc.get("overrides") else "")
        + f", {seed_list([r['seed'] for r in runs])}: mean ± std over the runs, on the unseen classes; "
        f"{plural(settings.get('trainer.max_epochs', '?'), 'epoch')}, best checkpoint by `{settings.get('monitor', '?')}` "
        f"(held-out seen classes). Data generation: {sig(data.get('seconds')) or '?'} s, once.",
    ]
    return out


def render_serve_load(doc: Doc, path: Path) -> list[str]:
    phases = [("load", doc.get("load")), ("rebuild in the middle", doc.get("rebuild"))]
    rows = [
        [
            name,
            p.get("clients"),
            count(p.get("searches")),
            p.get("errors"),
            sig(p.get("throughput_per_s")),
            " / ".join(sig(p.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")),
            memory(p.get("peak_rss_mb")),
        ]
        for name, p in phases
        if p
    ]
    out = table(
        ["phase", "clients", "searches", "errors", "searches/s", "p50 / p95 / p99 ms", "server peak memory"],
        rows,
    )
    setup, rebuild = doc.get("setup") or {}, doc.get("rebuild") or {}
    if setup:
        out += ["", "Setup: " + "; ".join(f"{k} {plain(v)}" for k, v in setup.items()) + "."]
    if "rebuild_s" in rebuild:
        out += [
            "",
            f"Rebuild under the running server: {sig(rebuild['rebuild_s'])} s; answers switched to the new "
            f"gallery: {'yes' if rebuild.get('switched') else 'no'}.",
        ]
    goals = doc.get("goals_met") or {}
    if goals:
        out += ["", "Goals met: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in goals.items()) + "."]
    return out


def _study_rows(doc: Doc, metrics: list[str]) -> list[list[str]]:
    rows = []
    for set_name, variants in (doc.get("summary") or {}).items():
        for variant, stats in variants.items():
            cells = [pm(stats[m]["mean"], stats[m]["std"]) if m in stats else "" for m in metrics]
            n = max((stats[m]["n"] for m in metrics if m in stats), default=0)
            rows.append([set_name, f"`{variant}`", n, *cells])
    return rows


def interval(c: dict) -> str:
    """A comparison's 95 % interval: ``[-0.012, +0.034]``."""
    return f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"


def _comparison_rows(doc: Doc) -> list[list[str]]:
    rows = []
    for c in doc.get("comparisons") or []:
        if "error" in c:
            rows.append([c["set"], f"`{c['metric']}`", f"`{c['b']}` − `{c['a']}`", c["error"], "", ""])
            continue
        rows.append(
            [
                c["set"],
                f"`{c['metric']}`",
                f"`{c['b']}` − `{c['a']}`",
                f"{c['diff']:+.3f}",
                interval(c),
                p_cell(c),
            ]
        )
    return rows


def render_study(doc: Doc, path: Path) -> list[str]:
    """A ``benchmarks/studies.py`` file: each variant's mean ± std over seeds, then the paired comparisons."""
    metrics = list(doc.get("metrics") or [])
    out = [doc.get("doc", ""), ""]
    out += table(["data", "variant", "seeds", *[f"`{m}`" for m in metrics]], _study_rows(doc, metrics))
    out += ["", "Variants (overrides of `" + doc.get("experiment", "?") + "`):", ""]
    out += [f"- `{name}`: `{' '.join(ov) or '(none)'}`" for name, ov in (doc.get("variants") or {}).items()]
    out += [
        f"- `{name}`: `{trained}`'s best checkpoint tested with `{' '.join(ov)}` (`sketchquant evaluate`)"
        for name, (trained, ov) in (doc.get("evaluations") or {}).items()
    ]
    out += [
        f"- on `{set_name}`, `{name}` is `{' '.join(ov)}`"
        for set_name, by_variant in (doc.get("per_set") or {}).items()
        for name, ov in by_variant.items()
    ]
    out += [f"- `{s}` is trained with `{e}`" for s, e in (doc.get("set_experiments") or {}).items()]
    comparisons = _comparison_rows(doc)
    if comparisons:
        out += [
            "",
            "Paired comparisons (B − A over the same test queries, seeds paired; 95 % bootstrap interval, "
            "sign-flip p-value; `sketchquant compare`):",
            "",
        ]
        out += table(["data", "metric", "B − A", "diff", "95 % interval", "p"], comparisons)
    return out


def render_unknown(doc: Doc, path: Path) -> list[str]:
    """A kind without a renderer: its top-level figures that are plain numbers, strings or booleans."""
    meta = {"commit", "command", "date", "machine", "load_before", "load_after"}
    rows = [
        [f"`{k}`", sig(v) if isinstance(v, float) else v]
        for k, v in doc.items()
        if k not in meta and isinstance(v, (int, float, str, bool))
    ]
    note = ["No render function for this kind of file yet (`RENDERERS` in `scripts/render_docs.py`)."]
    return note + ([""] + table(["figure", "value"], rows) if rows else [])


Renderer = Callable[[Doc, Path], list[str]]

#: kind -> (section title, render function), in the order of the sections
RENDERERS: dict[str, tuple[str, Renderer]] = {
    "make_train": ("What `make train` gives, over seeds", render_make_train),
    "eval_speed": ("Exact retrieval metrics against the bare matrix product", render_eval_speed),
    "cli_start": ("Command-line start-up", render_cli_start),
    "search_speed": ("Gallery build and search", render_search_speed),
    "serve_load": ("The search server under load", render_serve_load),
    "train_throughput": ("Training throughput", render_train_throughput),
    "quantization_claims": ("Method A's claims", render_quantization_claims),
    "zs_sbir_ablation": ("Method B's ablation", render_zs_sbir_ablation),
    "study": ("A study over seeds (benchmarks/studies.py)", render_study),
}


def kind_of(stem: str) -> str | None:
    """The longest registered kind that ``stem`` is or starts with (``search_speed_build`` → ``search_speed``)."""
    matches = [k for k in RENDERERS if stem == k or stem.startswith(k + "_")]
    return max(matches, key=len) if matches else None


def results_files(root: Path) -> list[Path]:
    """Every results file, in section order: by kind (:data:`RENDERERS` order, unknown kinds last), then name."""
    order = {k: i for i, k in enumerate(RENDERERS)}
    files = sorted((root / RESULTS).glob("*.json"))
    return sorted(files, key=lambda p: (order.get(kind_of(p.stem) or "", len(order)), p.stem))


def load(path: Path) -> Doc:
    return json.loads(path.read_text())


def measured(root: Path, stem: str) -> Doc | None:
    """``benchmarks/results/<stem>.json`` read, or None when that benchmark has not been run."""
    path = root / RESULTS / f"{stem}.json"
    return load(path) if path.is_file() else None


def not_measured(what: str, stem: str, it: str = "it") -> str:
    """What a README block says in place of a benchmark's figures that are not measured yet."""
    return (
        f"{what}: not measured yet (`python benchmarks/{stem}.py` measures {it}, "
        f"then `make docs` renders {it} here)."
    )


# ------------------------------------------------------------------------------------------------
# docs/benchmarks.md


INTRO = """# Benchmarks

<!-- Rendered by scripts/render_docs.py from benchmarks/results/*.json (make docs). Do not edit by hand:
tests/test_docs.py fails when this file differs from its rendering. -->

Every figure on this page is read from a results file under `benchmarks/results/`, written by the
script under `benchmarks/` whose name the file's name starts with. Each section ends with what its
file records about the run: the exact command, the commit, the date, the machine (cores, CPU model)
and the 1-minute load average before and after ("not recorded": the file was written before the
benchmarks recorded it). Timings depend on the machine and its load; ratios compare across machines
better than seconds. To refresh a section, run its command again, then `make docs`.
"""


def render_benchmarks_md(root: Path = ROOT) -> str:
    files = results_files(root)
    lines = [INTRO.rstrip("\n"), ""]
    if files:
        lines += ["Sections:", ""]
        for path in files:
            title = RENDERERS.get(kind_of(path.stem) or "", ("", None))[0] or path.stem
            lines.append(f"- [{title}](#{path.stem}) (`{RESULTS}/{path.name}`)")
    for path in files:
        kind = kind_of(path.stem)
        title, render = RENDERERS.get(kind or "", (path.stem, render_unknown))
        doc = load(path)
        lines += ["", anchor(path.stem), f"## {title}: `{path.name}`", ""]
        lines += render(doc, path)
        lines += ["", recorded(doc)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# README blocks


def _markdown_text(text: str) -> str:
    """Plain text safe in a markdown table cell: ``<root>`` is no HTML tag, ``*`` no emphasis."""
    return text.replace("<", "&lt;").replace("*", "\\*")


def first_comment_line(path: Path) -> str:
    """The file's first comment line, cut after its first sentence; ``…`` when the sentence runs on
    into the next line."""
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text:
            continue
        m = re.search(r"[.!?](?=\s|$)", text)
        if m and not text[: m.end()].endswith(("e.g.", "i.e.")):
            return text[: m.end()]
        return text.rstrip(",;: ") + " …"
    return ""


def block_configs(root: Path) -> str:
    base = root / "configs"
    groups = sorted(
        (p.name for p in base.iterdir() if p.is_dir()),
        key=lambda g: (g not in GROUPS, GROUPS.index(g) if g in GROUPS else 0, g),
    )
    rows = []
    for group in groups:
        for i, path in enumerate(sorted((base / group).glob("*.yaml"))):
            rel = path.relative_to(root).as_posix()
            what = _markdown_text(first_comment_line(path))
            rows.append([f"`{group}/`" if i == 0 else "", f"[`{path.stem}`]({rel})", what])
    return "\n".join(table(["group", "choice", "what it is (the file's first comment line)"], rows))


def block_make_train(root: Path) -> str:
    doc = measured(root, "make_train")
    if doc is None:
        return not_measured("The default run over seeds", "make_train")
    runs = doc.get("runs") or []
    seconds = [r["seconds"] for r in runs if r.get("seconds")]
    machine = (doc.get("machine") or {}).get("cores")
    per_run = f"; {sig(sum(seconds) / len(seconds) / 60, 2)} min per run" if seconds else ""
    where = f" on {machine} CPU cores" if machine else ""
    lines = [
        f"`sketchquant train {doc.get('experiment', 'zs_sbir')}`, {seed_list([r['seed'] for r in runs])}: "
        f"mean ± std on the unseen classes{per_run}{where} "
        f"([details](docs/benchmarks.md#make_train)).",
        "",
        *table(["features", "mAP@all", "P@100"], _train_rows(doc)),
    ]
    return "\n".join(lines)


#: the gallery size of the one-sketch latency goal (docs/search.md)
LATENCY_GOAL_PHOTOS = 100_000


def _headline_eval(doc: Doc) -> str | None:
    rows = [r for r in doc.get("results", []) if "error" not in r and r.get("scale") in SCALES]
    if not rows:
        return None
    parts = [f"{ratio(r['sbir_ratio'])} / {ratio(r['hashing_ratio'])}" for r in rows]
    parts[0] += " the time of the bare matrix product they need"
    where = [f"{part} at {SCALES[r['scale']]} scale" for part, r in zip(parts, rows)]
    return "**Exact retrieval metrics** (SBIR / hashing protocol) take " + ", ".join(where)


def _headline_cli(doc: Doc) -> str | None:
    parts = [
        f"`{c['name']}` {ratio(c['ratio'])}" for c in doc.get("commands", []) if c.get("goal") is not None
    ]
    if not parts:
        return None
    return f"**Command-line start-up** (÷ `{doc.get('baseline', 'import torch')}`): " + ", ".join(parts)


def _headline_search(doc: Doc) -> str | None:
    rows = [q for q in doc.get("query", []) if "error" not in q]
    parts = []
    flat = [q for q in rows if q["type"] == "flat" and "query_ms_p50" in q]
    if flat:
        goal = [q for q in flat if q["size"] == LATENCY_GOAL_PHOTOS]
        q = goal[0] if goal else max(flat, key=lambda q: q["size"])
        parts.append(
            f"one sketch against {count(q['size'])} photos (`flat`) in {sig(q['query_ms_p50'])} ms p50"
        )
    approx = [q for q in rows if q["type"] == "ivfpq"]
    if approx:
        q = max(approx, key=lambda q: q["size"])
        parts.append(
            f"`ivfpq` searches {count(q['size'])} photos in {sig(q['search_ms_p50'])} ms p50 at recall@10 "
            f"{q['recall_at_10']:.2f}"
        )
    return "**Search:** " + "; ".join(parts) if parts else None


def _headline_serve(doc: Doc) -> str | None:
    p = doc.get("load") or {}
    if not p.get("throughput_per_s"):
        return None
    return (
        f"**Serving:** {sig(p['throughput_per_s'])} searches/s from {p.get('clients')} clients, "
        f"p50 {sig(p.get('p50_ms'))} ms, {p.get('errors')} errors"
    )


#: results file stem -> one headline line (or None when the file has nothing to say)
HEADLINES: dict[str, Callable[[Doc], str | None]] = {
    "eval_speed": _headline_eval,
    "cli_start": _headline_cli,
    "search_speed": _headline_search,
    "serve_load": _headline_serve,
}


def block_headlines(root: Path) -> str:
    lines = []
    for stem, headline in HEADLINES.items():
        if (doc := measured(root, stem)) is not None and (text := headline(doc)):
            lines.append(f"- {text} ([{stem}](docs/benchmarks.md#{stem})).")
    return "\n".join(lines) if lines else "No benchmark has been run yet (see `docs/benchmarks.md`)."


#: method A's claims files: stem → column title (the frozen-head one first)
CLAIMS_FILES = {
    "quantization_claims": "frozen backbone",
    "quantization_claims_finetune": "fine-tuned",
    "quantization_claims_finetune_digits": "fine-tuned",
}
SLIDING = "sliding windows codes (kernel 3, stride 1)"
#: the claims as paired differences over seeds: (what B − A says, row A, row B)
CLAIM_PAIRS = [
    ("8-bit codes − float, same windows", "float (sliding)", "iReLU 8-bit codes (sliding)"),
    (
        "8-bit codes − sign hash, equal bytes (192 B)",
        "sign hash, 8x dims (= bytes of 8-bit codes)",
        "iReLU 8-bit codes (sliding)",
    ),
    (
        "8-bit codes − sign hash, equal bytes (24 B)",
        "sign hash, same dims",
        "iReLU 8-bit codes, dim/8 (= bytes of sign hash)",
    ),
    ("sliding − non-overlapping grid (192 B)", "non-overlapping 2x2 grid codes", SLIDING),
    ("sliding − stripes (192 B)", "stripes codes", SLIDING),
    ("sliding − global pooling (192 B)", "global codes, same bytes", SLIDING),
]
#: two-sided 95 % Student t quantiles by degrees of freedom (seed pairs − 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def seed_difference(a: list[float], b: list[float]) -> str:
    """Mean of ``b − a`` paired by seed, with its 95 % t-interval over the seed pairs."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    mean = sum(d) / len(d)
    if len(d) < 2 or len(d) - 1 not in T975:
        return f"{mean:+.3f}"
    sd = math.sqrt(sum((v - mean) ** 2 for v in d) / (len(d) - 1))
    half = T975[len(d) - 1] * sd / math.sqrt(len(d))
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def block_quantization_claims(root: Path) -> str:
    docs = {stem: doc for stem in CLAIMS_FILES if (doc := measured(root, stem)) is not None}
    if "quantization_claims" not in docs:
        return not_measured("Method A's claims", "quantization_claims", "them")
    columns = []  # (title, number of seeds, rows by name, chance)
    for stem, doc in docs.items():
        meta = doc.get("meta") or {}
        seeds = meta.get("seeds") or []
        title = f"{meta.get('data_config', '?')}, {CLAIMS_FILES[stem]} ({seed_list(seeds)})"
        by_name = {r["name"]: r for r in doc.get("rows", [])}
        columns.append((title, len(seeds), by_name, meta.get("chance_map_all")))
    rows = []
    for r in docs["quantization_claims"].get("rows", []):
        if r.get("claim") not in ("codes", "windows"):
            continue
        cells = []
        for _, n, by_name, _ in columns:
            got = by_name.get(r["name"])
            cells.append("" if got is None else pm(got["mean"], got["std"]) if n > 1 else score(got["mean"]))
        rows.append([r["claim"], r["name"], size(r["bytes"]), *cells])
    rows.append(["", "chance (random ranking)", "", *[score(c[3]) for c in columns]])
    out = [
        "Hashing-protocol mAP@all, mean ± std over seeds; bytes bit-packed. Frozen: the ImageNet backbone "
        "fixed, only the heads trained on its cached maps; fine-tuned: each variant a full `sketchquant "
        "train quantization` run ([details](docs/benchmarks.md#quantization_claims)).",
        "",
        *table(["claim", "features", "bytes / image", *[c[0] for c in columns]], rows),
    ]
    pairs = []
    for label, a, b in CLAIM_PAIRS:
        cells = []
        for _, _, by_name, _ in columns:
            ra, rb = by_name.get(a), by_name.get(b)
            ok = ra and rb and len(ra.get("per_seed", [])) == len(rb.get("per_seed", []))
            cells.append(seed_difference(ra["per_seed"], rb["per_seed"]) if ok else "")
        pairs.append([label, *cells])
    out += [
        "",
        "The claims as differences, paired by seed (mean [95 % t-interval over the seed pairs]):",
        "",
        *table(["B − A", *[c[0] for c in columns]], pairs),
    ]
    return "\n".join(out)


def study_block(root: Path, study: str) -> tuple[Doc | None, str]:
    """``(study_<study>.json, its first metric)``, or ``(None, the line saying how to measure it)``."""
    doc = measured(root, f"study_{study}")
    if doc is None:
        return None, (
            f"Study `{study}`: not measured yet (`python benchmarks/studies.py {study}` measures it, then "
            "`make docs` renders it here)."
        )
    return doc, (doc.get("metrics") or ["test/fused/map_all"])[0]


#: the folder recipe's checks: results stem → how the README names that recipe
FOLDER_RECIPES = {
    "folder_recipe": "recipe",
    "folder_recipe_128px": "at 128 px",
    "folder_recipe_96px": "at 96 px",
    "folder_recipe_kd1": "with λ_kd 1",
    "folder_recipe_previous": "before the warm-up",
}


def against(comparison: dict) -> str:
    """How a folder-recipe row names its baseline when it is not the untrained network at the recipe's own
    settings (e.g. ``, against `untrained_128```)."""
    return "" if comparison["a"] == "untrained" else f", against `{comparison['a']}`"


def block_folder_recipe(root: Path) -> str:
    """The folder recipe (and the ones before it) against the untrained network on the real-drawing sets."""
    doc, first = study_block(root, "folder_recipe")
    if doc is None:
        return first
    rows = []
    for stem, name in FOLDER_RECIPES.items():
        got = doc if stem == "folder_recipe" else measured(root, f"study_{stem}")
        for c in (got or {}).get("comparisons") or []:
            if c.get("metric") != first or "error" in c:
                continue
            side = got["summary"][c["set"]]
            a, b = side[c["a"]][first], side[c["b"]][first]
            trained = [r["test"][first] for r in got["runs"][c["set"]][c["b"]]]
            rows.append(
                [
                    c["set"],
                    f"[{name}](docs/benchmarks.md#study_{stem}){against(c)}",
                    seed_list(got.get("seeds") or []),
                    f"{score(a['mean'])} ± {score(a['std'])}",
                    f"{score(b['mean'])} ± {score(b['std'])}",
                    " / ".join(score(v) for v in trained),
                    f"{c['diff']:+.3f} {interval(c)}",
                    p_cell(c),
                ]
            )
    head = [
        "data",
        "recipe",
        "seeds",
        "untrained",
        "trained",
        "trained, per seed",
        "diff [95 % interval]",
        "p",
    ]
    classes = [
        f"- {c['set']}, `{c['metric']}`{against(c)}: "
        + ", ".join(
            f"{r['class']} {score(r['a_mean'])} → {score(r['b_mean'])} ({r['diff']:+.3f} {interval(r)})"
            for r in c["per_class"]
        )
        for c in doc.get("comparisons") or []
        if c.get("per_class")
    ]
    return "\n".join(
        [
            *table(head, rows),
            "",
            f"Unseen `{first}`; mean ± std over seeds; B − A paired over queries and seeds.",
            *(
                [
                    "",
                    "Class by class, untrained → recipe (each class's own queries, mean over seeds; B − A "
                    "paired):",
                    "",
                ]
                if classes
                else []
            ),
            *classes,
        ]
    )


#: the components study's variants, as the README names what each one takes away
COMPONENTS = {
    "no_kd": "distillation (λ_kd 1 vs 0)",
    "no_da": "distribution alignment (λ_da 0.1 vs 0)",
    "no_prototypes": "PQ prototypes (fused vs raw, same weights)",
    "distance_fusion": "feature vs distance fusion (same weights)",
    "smaller_images": "image size (96 vs 64 px; glyphs 64 vs 48)",
}


def comparison_grid(doc: Doc, metric: str, label: Callable[[str, str], str]) -> tuple[list[str], dict]:
    """A study's comparisons of ``metric`` as ``(sets, {label(A, B): {set: "diff [interval] p …"}})``."""
    cells: dict[str, dict[str, str]] = {}
    for c in doc.get("comparisons") or []:
        if c.get("metric") == metric and "error" not in c:
            p = p_cell(c)
            cells.setdefault(label(c["a"], c["b"]), {})[c["set"]] = f"{c['diff']:+.3f} {interval(c)} p {p}"
    return list(doc.get("sets") or {}), cells


def means_row(doc: Doc, metric: str, variant: str, sets: list[str]) -> list[str]:
    summary = doc.get("summary") or {}
    return [score(summary[s][variant][metric]["mean"]) if variant in summary.get(s, {}) else "" for s in sets]


def grid_block(
    root: Path, study: str, label: Callable[[str, str], str], base: tuple[str, str], head: str, foot: str
) -> str:
    """A study's comparisons as one row per pair and one column per set, under a row of ``base``'s means
    (``(variant, row name)``); ``head`` / ``foot`` take ``{metric}``, ``{seeds}`` and ``{link}``."""
    doc, first = study_block(root, study)
    if doc is None:
        return first
    sets, cells = comparison_grid(doc, first, label)
    rows = [[base[1], *means_row(doc, first, base[0], sets)]]
    rows += [[name, *[by_set.get(s, "") for s in sets]] for name, by_set in cells.items()]
    fill = {
        "metric": first,
        "seeds": seed_list(doc.get("seeds") or []),
        "link": f"docs/benchmarks.md#study_{study}",
    }
    return "\n".join([*table([head.format(**fill), *sets], rows), "", foot.format(**fill)])


def block_components(root: Path) -> str:
    """What each component of method B adds (recipe − the variant without it), one column per data set."""
    return grid_block(
        root,
        "components",
        lambda a, b: COMPONENTS.get(a, a),
        ("recipe", "the recipe itself"),
        "unseen `{metric}`: what it adds ({seeds})",
        "Recipe − recipe without it, paired over the same test queries: 95 % bootstrap interval and "
        "sign-flip p-value ([all metrics and the raw features]({link})).",
    )


#: the studies on seen classes standing in as unseen that the README shows, each in a block of its name
SEEN_STUDIES = (
    "small_data_seen",
    "kd_seen",
    "epochs_seen",
    "augment_seen",
    "frozen_trunk_seen",
    "cosine_seen",
    "kd_glyph_seen",
    "image_size_seen",
)


def seen_study_block(root: Path, study: str) -> str:
    """A study on seen classes standing in as unseen (:data:`SEEN_STUDIES`): each pair's difference per
    set, under the untrained network's means."""
    return grid_block(
        root,
        study,
        lambda a, b: f"`{b}` − `{a}`",
        ("untrained", "`untrained` itself"),
        "seen classes as unseen, `{metric}` ({seeds})",
        "B − A paired over the same test queries and seeds: 95 % bootstrap interval and sign-flip "
        "p-value ([all metrics and variants]({link})).",
    )


BLOCKS: dict[str, Callable[[Path], str]] = {
    "components": block_components,
    "configs": block_configs,
    "make_train": block_make_train,
    "headlines": block_headlines,
    "quantization_claims": block_quantization_claims,
    "folder_recipe": block_folder_recipe,
    **{study: partial(seen_study_block, study=study) for study in SEEN_STUDIES},
}

OPEN = re.compile(r"<!-- rendered:([A-Za-z0-9_-]+) -->")


class MarkerError(ValueError):
    """A README block marker is opened and not closed."""


def blocks_in(text: str, where: str = README) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` of each marked block's content (between its opening and closing marker),
    known or not; a marker opened and not closed is a :class:`MarkerError`."""
    out = []
    for m in OPEN.finditer(text):
        name = m.group(1)
        close = f"<!-- /rendered:{name} -->"
        end = text.find(close, m.end())
        if end < 0:
            raise MarkerError(
                f"{where}: block '{name}' is opened (<!-- rendered:{name} -->) and not closed ({close})"
            )
        out.append((name, m.end(), end))
    return out


def unknown_blocks(text: str, where: str = README) -> list[str]:
    """Marked blocks this script has no rendering for (left as they are)."""
    return [name for name, _, _ in blocks_in(text, where) if name not in BLOCKS]


def render_readme(text: str, root: Path = ROOT, where: str = README) -> str:
    """``text`` (README.md's) with every marked block's content replaced by its rendering."""
    out, pos = [], 0
    for name, start, end in blocks_in(text, where):
        if name not in BLOCKS:
            continue  # not rendered here: left as it is
        out += [text[pos:start], "\n", BLOCKS[name](root), "\n"]
        pos = end
    return "".join(out + [text[pos:]])


# ------------------------------------------------------------------------------------------------
# check and write


def _difference(label: str, actual: str, expected: str) -> str:
    diff = difflib.unified_diff(
        actual.splitlines(),
        expected.splitlines(),
        f"{label} (as committed)",
        f"{label} (rendered)",
        lineterm="",
        n=1,
    )
    lines = list(diff)
    return "\n".join(lines[:40] + (["…"] if len(lines) > 40 else []))


def check_benchmarks_md(root: Path = ROOT, path: Path | None = None) -> list[str]:
    """The difference between ``path`` (default: the repository's docs/benchmarks.md) and its rendering
    from ``root``'s results files, as a one-item list; empty when they are equal."""
    path = path or root / BENCHMARKS_MD
    expected = render_benchmarks_md(root)
    actual = path.read_text() if path.is_file() else ""
    if actual == expected:
        return []
    return [
        f"{path}: stale; run `python scripts/render_docs.py`\n" + _difference(path.name, actual, expected)
    ]


def check_readme(root: Path = ROOT, path: Path | None = None) -> list[str]:
    """One difference per marked block of ``path`` (default: the repository's README.md) that differs
    from its rendering; blocks without markers, and blocks rendered elsewhere, are not checked."""
    path = path or root / README
    if not path.is_file():
        return []
    text, problems = path.read_text(), []
    for name, start, end in blocks_in(text, str(path)):
        if name not in BLOCKS:
            continue
        want = "\n" + BLOCKS[name](root) + "\n"
        if text[start:end] != want:
            problems.append(
                f"{path}: block '{name}' is stale; run `python scripts/render_docs.py`\n"
                + _difference(f"{path.name} [{name}]", text[start:end], want)
            )
    return problems


def check(root: Path = ROOT) -> list[str]:
    """Every difference between the repository's rendered files and their rendering (empty: up to date)."""
    return check_benchmarks_md(root) + check_readme(root)


def write(root: Path = ROOT) -> list[Path]:
    """Render and write what changed; returns the files written."""
    written = []
    targets = {root / BENCHMARKS_MD: render_benchmarks_md(root)}
    readme = root / README
    if readme.is_file():
        targets[readme] = render_readme(readme.read_text(), root)
    for path, text in targets.items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 naming each stale file and block"
    )
    args = p.parse_args(argv)
    try:
        if args.check:
            problems = check()
            for problem in problems:
                print(problem, file=sys.stderr)
            readme = ROOT / README
            for name in unknown_blocks(readme.read_text()) if readme.is_file() else []:
                print(f"note: {README} block '{name}' has no rendering here (BLOCKS): left as it is")
            return 1 if problems else 0
        for path in write():
            print(f"rendered {path.relative_to(ROOT)}")
    except MarkerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
