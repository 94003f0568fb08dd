"""The ``sketchquant`` command line: argument parsing only; each subcommand calls one function."""

from __future__ import annotations

import argparse
import os
import sys

EPILOG_OVERRIDES = (
    "overrides: key=value pairs on top of the experiment, e.g. trainer.max_epochs=3 data.batch_size=32; "
    "group=choice swaps a config group file, e.g. logger=wandb data=sketchy."
)


def _parser() -> argparse.ArgumentParser:
    from sketchquant.datamodules.generated import GENERATORS

    p = argparse.ArgumentParser(
        prog="sketchquant",
        description="Compact, retrieval-ready image features: iReLU quantization (method A) and "
        "zero-shot sketch-based image retrieval (method B).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser(
        "train", help="train an experiment (then test its best checkpoint)", epilog=EPILOG_OVERRIDES
    )
    t.add_argument("experiment", help="a name from configs/experiment/ (see `sketchquant list`)")
    t.add_argument("overrides", nargs="*", metavar="key=value")

    e = sub.add_parser("evaluate", help="test a checkpoint with its saved config", epilog=EPILOG_OVERRIDES)
    e.add_argument("--ckpt", required=True, help="a checkpoint written by `sketchquant train`")
    e.add_argument("overrides", nargs="*", metavar="key=value")

    c = sub.add_parser(
        "config", help="print the resolved config YAML (runs nothing)", epilog=EPILOG_OVERRIDES
    )
    c.add_argument("experiment")
    c.add_argument("overrides", nargs="*", metavar="key=value")

    sub.add_parser("list", help="list experiments and config group choices")

    ef = sub.add_parser("eval-features", help="score saved features with the standard protocols")
    ef.add_argument("query", help=".npz with `features` (N×d) and `labels` (N, or N×C 0/1)")
    ef.add_argument("gallery", help=".npz with `features` and `labels`")
    ef.add_argument("--protocol", choices=("sbir", "hashing"), default="sbir")
    ef.add_argument("--k", type=int, nargs="+", default=[100, 200], help="cut-offs for map_k / p_k")
    ef.add_argument("--ap", choices=("voc", "standard"), default="voc")
    ef.add_argument("--metric", choices=("l2", "ip"), default=None, help="default: l2 (sbir on normalised)")
    ef.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    enc = sub.add_parser("encode", help="method A: export uint8 codes of a dataset split")
    enc.add_argument("--ckpt", required=True)
    enc.add_argument("--out", required=True, help="output .npz (codes, labels, paths)")
    enc.add_argument("--split", choices=("database", "query", "train"), default="database")
    enc.add_argument("overrides", nargs="*", metavar="key=value", help="data overrides, e.g. data.root=...")

    ix = sub.add_parser(
        "index",
        help="index a photo folder or list with a checkpoint of either method into a gallery folder",
        epilog="overrides go on top of the checkpoint's config, e.g. eval.fusion=distance "
        "trainer.strategy=ddp trainer.devices=2. Legacy form: `index CODES.npz --out INDEX` "
        "(method A codes written by `encode`).",
    )
    ix.add_argument("codes", nargs="?", help=argparse.SUPPRESS)  # legacy: an encode .npz
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
    ix.add_argument("--pq-k", type=int, default=None, help="PQ centres (default: the checkpoint's eval.pq_k)")
    ix.add_argument("overrides", nargs="*", metavar="key=value", default=[])

    se = sub.add_parser(
        "search",
        help="search a gallery with query images (sketches for method B, images for method A)",
        epilog="Legacy form: `search --index INDEX --ckpt CKPT IMAGE...` for an index built from codes.npz.",
    )
    se.add_argument("--gallery", help="a gallery folder written by `sketchquant index`")
    se.add_argument("images", nargs="+", metavar="QUERY")
    se.add_argument("--k", type=int, default=10)
    se.add_argument("--features", choices=("raw", "proto", "fused", "codes"), default=None)
    se.add_argument("--json", action="store_true", help="print one JSON object")
    se.add_argument("--sheet", default=None, help="PNG contact sheet: each query, then its top k")
    se.add_argument("--ckpt", default=None, help="overrides the manifest's checkpoint (same sha256 only)")
    se.add_argument("--force", action="store_true", help="search with a checkpoint of another sha256")
    se.add_argument("--index", default=None, help=argparse.SUPPRESS)  # legacy method-A index file

    sv = sub.add_parser("serve", help="the drawing page: sketch (or upload), see the gallery's top k")
    sv.add_argument("--gallery", required=True)
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=7860)
    sv.add_argument("--k", type=int, default=12)
    sv.add_argument("--ckpt", default=None)
    sv.add_argument("--force", action="store_true")

    sw = sub.add_parser("sweep", help="run a hyperparameter sweep spec (wandb sweep format)")
    sw.add_argument("spec", help="e.g. configs/sweeps/zs_sbir_losses.yaml")
    sw.add_argument("--online", action="store_true", help="use wandb's server and agent (needs network)")
    sw.add_argument("--workers", type=int, default=1, help="parallel trials (each pinned to a GPU if any)")
    sw.add_argument("--count", type=int, default=None, help="max trials (default: the whole grid)")
    sw.add_argument("--out", default=None, help="sweep folder (default runs/sweeps/<name>-<time>)")
    sw.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every trial")

    d = sub.add_parser("data", help="the embedded benchmarks: make or preview")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    dm = dsub.add_parser("make", help="generate the embedded benchmark (seconds)")
    dm.add_argument("--out", default=None, help="default data/glyphs (sketch_photo) or data/glyph_scenes")
    dm.add_argument("--kind", choices=sorted(GENERATORS), default="sketch_photo")
    dm.add_argument("overrides", nargs="*", metavar="key=value", help="generator settings, e.g. seed=1")
    dp = dsub.add_parser("preview", help="draw a contact sheet of both domains")
    dp.add_argument("dir")
    dp.add_argument("--out", required=True, help="PNG file")
    return p


def _run(args: argparse.Namespace) -> int:
    from sketchquant.app.methods import compose
    from sketchquant.core.config import to_yaml

    if args.command == "train":
        from sketchquant.app.train import train

        train(compose(args.experiment, args.overrides))
    elif args.command == "evaluate":
        from sketchquant.app.train import evaluate

        evaluate(args.ckpt, args.overrides)
    elif args.command == "config":
        sys.stdout.write(to_yaml(compose(args.experiment, args.overrides)))
    elif args.command == "list":
        from sketchquant.core.config import GROUPS, list_choices

        print("experiments: " + ", ".join(list_choices("experiment")))
        for group in GROUPS:
            print(f"{group}: " + ", ".join(list_choices(group)))
        print("sweeps: " + ", ".join(list_choices("sweeps")))
    elif args.command == "eval-features":
        from sketchquant.core.retrieval.npz_eval import eval_features

        eval_features(
            args.query,
            args.gallery,
            protocol=args.protocol,
            ks=tuple(args.k),
            ap=args.ap,
            as_json=args.json,
            metric=args.metric,
        )
    elif args.command == "encode":
        from sketchquant.app.export import encode

        encode(args.ckpt, args.out, split=args.split, overrides=args.overrides)
    elif args.command == "index" and args.codes and not args.ckpt:
        from sketchquant.app.export import build_index

        build_index(args.codes, args.out)
    elif args.command == "index":
        from sketchquant.app.gallery import build_gallery

        if not (args.ckpt and args.images):
            raise ValueError("index needs --ckpt CKPT --images DIR_OR_LIST --out GALLERY")
        build_gallery(
            args.ckpt,
            args.images,
            args.out,
            update=args.update,
            index_type=args.index_type,
            batch_size=args.batch_size,
            workers=args.workers,
            on_bad_image=args.on_bad_image,
            pq_m=args.pq_m,
            pq_k=args.pq_k,
            overrides=[args.codes] * bool(args.codes) + list(args.overrides),  # the first key=value
        )
    elif args.command == "search" and args.index:
        from sketchquant.app.export import search

        if not args.ckpt:
            raise ValueError("search --index needs --ckpt")
        search(args.ckpt, args.index, args.images, k=args.k)
    elif args.command == "search":
        from sketchquant.app.gallery import search_gallery

        if not args.gallery:
            raise ValueError("search needs --gallery GALLERY")
        search_gallery(
            args.gallery,
            args.images,
            k=args.k,
            features=args.features,
            ckpt=args.ckpt,
            force=args.force,
            as_json=args.json,
            sheet=args.sheet,
        )
    elif args.command == "serve":
        from sketchquant.app.serve import serve

        serve(args.gallery, host=args.host, port=args.port, k=args.k, ckpt=args.ckpt, force=args.force)
    elif args.command == "sweep":
        from sketchquant.app.sweep import run_sweep

        run_sweep(
            args.spec,
            online=args.online,
            workers=args.workers,
            count=args.count,
            out=args.out,
            overrides=args.overrides,
        )
    elif args.command == "data":
        from sketchquant.core.config import dotlist_to_dict, parse_overrides
        from sketchquant.datamodules.cli_data import data_make, data_preview

        if args.data_command == "make":
            data_make(args.out, args.kind, dotlist_to_dict(parse_overrides(args.overrides)[1]))
        else:
            data_preview(args.dir, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after options (e.g. `sweep SPEC --workers 2 a.b=1`)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    from sketchquant.callbacks.nan_guard import NonFiniteLossError
    from sketchquant.core.config import ConfigError

    try:
        return _run(args)
    except (ConfigError, FileNotFoundError, ValueError, NonFiniteLossError) as err:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
