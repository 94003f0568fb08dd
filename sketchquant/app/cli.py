"""The ``sketchquant`` command line: the parser, and one table from subcommand to the function it calls.

:data:`COMMANDS` maps each subcommand to ``"module:function"``; the function is imported only when its
command runs and is called with the parsed arguments it names (as keyword arguments). So ``config``,
``list`` and ``--help`` import no torch, ``eval-features`` and ``search`` no Lightning: each command
imports what it needs and nothing else. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import os
import sys
from collections.abc import Callable

from sketchquant.app.methods import all_gallery_features
from sketchquant.core.lazy import load_object
from sketchquant.datamodules.generated import GENERATORS

EPILOG_OVERRIDES = (
    "overrides: key=value pairs on top of the experiment, e.g. trainer.max_epochs=3 data.batch_size=32; "
    "group=choice swaps a config group file, e.g. logger=wandb data=sketchy."
)
TRUST_HELP = (
    "load a checkpoint that needs arbitrary unpickling (it can run code): only for files from a source "
    "you trust as you trust code you run"
)

#: subcommand -> "module:function", or a function of the parsed arguments choosing one (legacy forms)
COMMANDS: dict[str, str | Callable[[argparse.Namespace], str]] = {
    "train": "sketchquant.app.train:train_experiment",
    "evaluate": "sketchquant.app.train:evaluate",
    "config": "sketchquant.app.catalog:print_config",
    "list": "sketchquant.app.catalog:print_catalog",
    "eval-features": "sketchquant.core.retrieval.npz_eval:eval_features",
    "compare": "sketchquant.app.compare:compare_command",
    "encode": "sketchquant.app.export:encode",
    "index": lambda a: (
        "sketchquant.app.export:build_index"
        if a.codes_path and not a.ckpt
        else "sketchquant.app.gallery.build:build_gallery"
    ),
    "search": lambda a: (
        "sketchquant.app.export:search" if a.index_path else "sketchquant.app.gallery.search:search_gallery"
    ),
    "serve": "sketchquant.app.serve:serve",
    "sweep": "sketchquant.app.sweep:run_sweep",
    "data make": "sketchquant.datamodules.cli_data:data_make",
    "data preview": "sketchquant.datamodules.cli_data:data_preview",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sketchquant",
        description="Compact, retrieval-ready image features: iReLU quantization (method A) and "
        "zero-shot sketch-based image retrieval (method B).",
    )
    p.add_argument(
        "--config-dir",
        default=None,
        help="a folder of your own configs (experiment/, model/, ...), looked up before the shipped ones "
        "(also: SKETCHQUANT_CONFIG_DIR)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, help: str, *, overrides: bool = False, epilog: str | None = None, **kw):
        parser = sub.add_parser(
            name, help=help, epilog=epilog or (EPILOG_OVERRIDES if overrides else None), **kw
        )
        return parser

    def trust(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--trust-checkpoint", dest="trust", action="store_true", help=TRUST_HELP)

    t = command("train", "train an experiment (then test its best checkpoint)", overrides=True)
    t.add_argument("experiment", help="a name from configs/experiment/ (see `sketchquant list`)")
    t.add_argument("overrides", nargs="*", metavar="key=value")

    e = command("evaluate", "test a checkpoint with its saved config", overrides=True)
    e.add_argument("--ckpt", required=True, help="a checkpoint written by `sketchquant train`")
    e.add_argument("overrides", nargs="*", metavar="key=value")
    trust(e)

    c = command("config", "print the resolved config YAML (runs nothing)", overrides=True)
    c.add_argument("experiment")
    c.add_argument("overrides", nargs="*", metavar="key=value")

    command("list", "list experiments, config group choices and sweeps")

    ef = command("eval-features", "score saved features with the standard protocols")
    ef.add_argument(
        "query_path", metavar="QUERY", help=".npz with `features` (N×d) and `labels` (N, or N×C 0/1)"
    )
    ef.add_argument("gallery_path", metavar="GALLERY", help=".npz with `features` and `labels`")
    ef.add_argument("--protocol", choices=("sbir", "hashing"), default="sbir")
    ef.add_argument(
        "--k", dest="ks", type=int, nargs="+", default=[100, 200], help="cut-offs for map_k / p_k"
    )
    ef.add_argument("--ap", choices=("voc", "standard"), default="voc")
    ef.add_argument("--metric", choices=("l2", "ip"), default=None, help="default: l2 (sbir on normalised)")
    ef.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object, not a table")

    cp = command(
        "compare",
        "is run B better than run A? the difference of a metric with a paired bootstrap interval",
        epilog="RUN: a run folder (with queries.npz beside results.json), a results / eval-<time>.json, or "
        "a per-query file. Seeds: `compare A1 A2 A3 -- B1 B2 B3` (or `--vs B1 B2 B3`): A_i is paired with "
        "B_i. diff = B − A; see docs/comparing.md.",
    )
    cp.add_argument("runs", nargs="+", metavar="RUN")
    cp.add_argument("--vs", dest="versus", nargs="+", metavar="RUN", help="the B side (what `--` starts)")
    cp.add_argument("--metric", default=None, help="a logged name, e.g. test/fused/map_all (default: all)")
    cp.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples (and permutations)")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object")
    cp.add_argument(
        "--per-class", action="store_true", help="with --metric: the same within each query class too"
    )

    enc = command("encode", "method A: export uint8 codes of a dataset split")
    enc.add_argument("--ckpt", required=True)
    enc.add_argument("--out", required=True, help="output .npz (codes, labels, paths)")
    enc.add_argument("--split", choices=("database", "query", "train"), default="database")
    enc.add_argument("overrides", nargs="*", metavar="key=value", help="data overrides, e.g. data.root=...")
    trust(enc)

    ix = command(
        "index",
        "index a photo folder or list with a checkpoint of either method into a gallery folder",
        epilog="overrides go on top of the checkpoint's config, e.g. eval.fusion=distance "
        "trainer.strategy=ddp trainer.devices=2. Legacy form: `index CODES.npz --out INDEX` "
        "(method A codes written by `encode`).",
    )
    ix.add_argument("codes_path", nargs="?", help=argparse.SUPPRESS)  # legacy: an encode .npz
    ix.add_argument("--ckpt", help="a checkpoint written by `sketchquant train` (either method)")
    ix.add_argument("--images", help="a folder (walked recursively) or a list file (path[,labels] lines)")
    ix.add_argument("--out", required=True, help="the gallery folder (legacy form: the index file)")
    ix.add_argument("--update", action="store_true", help="encode only new or changed files, drop deleted")
    ix.add_argument(
        "--index-type",
        default=None,
        help="flat (exact, default) | ivfpq | hnsw | a faiss index_factory string",
    )
    ix.add_argument("--batch-size", type=int, default=None)
    ix.add_argument("--workers", type=int, default=None, help="data-loading processes")
    ix.add_argument("--on-bad-image", choices=("skip", "error"), default="skip")
    ix.add_argument(
        "--pq-m", type=int, default=None, help="PQ subspaces (default: the checkpoint's eval.pq_m)"
    )
    ix.add_argument(
        "--pq-k",
        type=int,
        default=None,
        help="PQ centres, at most (default: the checkpoint's eval.pq_k; "
        "fewer on a small gallery unless eval.pq_min_points=0)",
    )
    ix.add_argument("overrides", nargs="*", metavar="key=value", default=[])
    trust(ix)

    se = command(
        "search",
        "search a gallery with query images (sketches for method B, images for method A)",
        epilog="Legacy form: `search --index INDEX --ckpt CKPT IMAGE...` for an index built from codes.npz.",
    )
    se.add_argument("--gallery", help="a gallery folder written by `sketchquant index`")
    se.add_argument("queries", nargs="+", metavar="QUERY")
    se.add_argument("--k", type=int, default=10)
    se.add_argument("--features", choices=all_gallery_features(), default=None)
    se.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object")
    se.add_argument("--sheet", default=None, help="PNG contact sheet: each query, then its top k")
    se.add_argument("--ckpt", default=None, help="overrides the manifest's checkpoint (same sha256 only)")
    se.add_argument("--force", action="store_true", help="search with a checkpoint of another sha256")
    se.add_argument("--index", dest="index_path", default=None, help=argparse.SUPPRESS)  # legacy index
    trust(se)

    sv = command("serve", "the drawing page and a JSON search API on one server")
    sv.add_argument("--gallery", required=True)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=7860)
    sv.add_argument("--k", type=int, default=12)
    sv.add_argument("--ckpt", default=None)
    sv.add_argument("--force", action="store_true")
    sv.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted upload (MB)")
    sv.add_argument("--max-pixels", type=float, default=16e6, help="largest accepted image (pixels)")
    trust(sv)

    sw = command("sweep", "run a hyperparameter sweep spec (wandb sweep format)")
    sw.add_argument("spec_path", metavar="SPEC", help="e.g. configs/sweeps/zs_sbir_losses.yaml, or a name")
    sw.add_argument("--online", action="store_true", help="use wandb's server and agent (needs network)")
    sw.add_argument("--workers", type=int, default=1, help="parallel trials (each pinned to a GPU if any)")
    sw.add_argument("--count", type=int, default=None, help="max trials (default: the whole grid)")
    sw.add_argument("--out", default=None, help="sweep folder (default runs/sweeps/<name>-<time>)")
    sw.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every trial")

    d = command("data", "the embedded and offline data sets: make or preview")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    dm = dsub.add_parser("make", help="generate a data set (seconds)")
    dm.add_argument("--out", default=None, help="default data/<kind> (see --kind)")
    dm.add_argument("--kind", choices=sorted(GENERATORS), default="sketch_photo")
    dm.add_argument("overrides", nargs="*", metavar="key=value", help="generator settings, e.g. seed=1")
    dp = dsub.add_parser("preview", help="draw a contact sheet of both domains")
    dp.add_argument("data_dir", metavar="DIR")
    dp.add_argument("--out", required=True, help="PNG file")
    return p


def target(args: argparse.Namespace) -> str:
    """The ``"module:function"`` the parsed ``args`` run."""
    name = args.command + (f" {args.data_command}" if args.command == "data" else "")
    handler = COMMANDS[name]
    return handler if isinstance(handler, str) else handler(args)


def load_command(name: str) -> Callable:
    """Import a command's function with the cyclic garbage collector paused. Importing torch, timm and
    torchvision allocates a few hundred thousand objects that live as long as the process, and the
    collector re-scans them again and again while they load: about 0.5 s of a 4 s ``search`` on an idle
    2-core machine (benchmarks/cli_start.py). The collector is back on before the command runs."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return load_object(name)
    finally:
        if enabled:
            gc.enable()


def run(args: argparse.Namespace) -> int:
    """Import the command's function and call it with the arguments it names."""
    fn = load_command(target(args))
    params = inspect.signature(fn).parameters
    fn(**{k: v for k, v in vars(args).items() if k in params})
    return 0


def _compare_sides(argv: list[str]) -> list[str]:
    """``compare A1 A2 -- B1 B2``: argparse drops a bare ``--``, so it becomes ``--vs`` first."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):  # the options before the command
        i += 2 if argv[i] == "--config-dir" else 1
    if i < len(argv) and argv[i] == "compare" and "--" in argv[i + 1 :]:
        j = argv.index("--", i + 1)
        return [*argv[:j], "--vs", *argv[j + 1 :]]
    return argv


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")
    parser = _parser()
    args, extra = parser.parse_known_args(_compare_sides(list(sys.argv[1:] if argv is None else argv)))
    # key=value overrides may also come after options (e.g. `sweep SPEC --workers 2 a.b=1`)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    if getattr(args, "codes_path", None) and "=" in args.codes_path:  # `index --ckpt C ... key=value`
        args.overrides, args.codes_path = [args.codes_path, *args.overrides], None
    if args.config_dir:  # through the environment: sweep trials and DDP workers see it too
        os.environ["SKETCHQUANT_CONFIG_DIR"] = args.config_dir
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as err:  # ConfigError and the other input errors are ValueErrors
        if os.environ.get("SKETCHQUANT_DEBUG"):
            raise
        print(f"sketchquant {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sketchquant {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a crash (also one raised in a DDP worker): one line, the traceback on demand
        if os.environ.get("SKETCHQUANT_DEBUG"):
            raise
        print(f"sketchquant {args.command}: error: {crash_line(err)}", file=sys.stderr)
        print("(set SKETCHQUANT_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def crash_line(err: BaseException) -> str:
    """``Type: message`` of the error that started it all. A DDP worker's error arrives as the text of its
    traceback (``ProcessRaisedException``): its last line is the worker's own ``Type: message``."""
    text = str(err).strip()
    if type(err).__name__ == "ProcessRaisedException" or "Traceback (most recent call last)" in text:
        last = [line for line in text.splitlines() if line.strip()]
        return last[-1].strip() if last else type(err).__name__
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    first = (str(root).strip().splitlines() or [""])[0]
    return f"{type(root).__name__}: {first}" if first else type(root).__name__


def entry() -> None:
    """The console script and ``python -m sketchquant``: :func:`main`, then exit without the interpreter's
    last garbage collection over every imported object. After torch and timm (torchvision, torch._dynamo)
    that pass alone took about 1 s of a 4.5 s ``search`` on an idle 2-core machine (see
    benchmarks/cli_start.py). ``gc.freeze()`` moves every live object out of the collector's reach: atexit
    handlers (wandb, Lightning, temporary folders) still run and streams are still flushed and closed; only
    cyclic garbage left at exit is not collected, which the exit frees anyway. Not in :func:`main`, which
    tests call in-process."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
