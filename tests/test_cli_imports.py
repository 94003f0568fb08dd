"""Each command imports what it needs and nothing else: the modules a fresh interpreter holds after the
command ran in-process (never a time: the start-up budget is benchmarks/cli_start.py's)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "faiss", "torchmetrics", "timm", "gradio", "wandb")

PROBE = """
import json, sys
from sketchquant.app.cli import main
try:
    code = main({argv!r})
except SystemExit as stop:  # --help
    code = stop.code
print("\\n" + json.dumps({{"code": code, "modules": sorted(sys.modules)}}))
"""


def imported_by(argv: list[str], cwd=None) -> tuple[int, set[str]]:
    """``(exit code, top-level modules imported)`` after ``sketchquant ARGV`` ran in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, cwd=cwd, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["code"], {m.split(".")[0] for m in result["modules"]}


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["config", "zs_sbir", "trainer.max_epochs=3"],
        ["config", "quantization"],
        ["--help"],
        ["train", "--help"],
    ],
)
def test_config_list_and_help_import_no_torch(argv):
    code, modules = imported_by(argv)
    assert code == 0
    assert not modules & set(HEAVY), f"{argv} imported {sorted(modules & set(HEAVY))}"


def test_data_preview_imports_no_torch(tmp_path):
    from PIL import Image

    for domain, colour in (("sketch", "white"), ("photo", "red")):
        (tmp_path / "d" / domain / "c0").mkdir(parents=True)
        Image.new("RGB", (16, 16), colour).save(tmp_path / "d" / domain / "c0" / "0.png")
    code, modules = imported_by(["data", "preview", str(tmp_path / "d"), "--out", str(tmp_path / "s.png")])
    assert code == 0 and (tmp_path / "s.png").is_file()
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_eval_features_imports_no_lightning(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("q", "g"):
        np.savez(tmp_path / f"{name}.npz", features=rng.normal(size=(10, 10)), labels=np.arange(10) % 3)
    code, modules = imported_by(["eval-features", str(tmp_path / "q.npz"), str(tmp_path / "g.npz"), "--json"])
    assert code == 0
    assert "torch" in modules  # the metrics are torch
    assert not modules & {
        "pytorch_lightning",
        "lightning_fabric",
        "lightning",
        "torchmetrics",
        "timm",
        "wandb",
    }


MINIMAL_ARGV = [
    ["train", "zs_sbir"],
    ["evaluate", "--ckpt", "c.ckpt"],
    ["config", "zs_sbir"],
    ["list"],
    ["eval-features", "q.npz", "g.npz"],
    ["compare", "a", "b"],
    ["encode", "--ckpt", "c.ckpt", "--out", "o.npz"],
    ["index", "--ckpt", "c.ckpt", "--images", "photos", "--out", "g"],
    ["index", "codes.npz", "--out", "codes.faiss"],
    ["search", "--gallery", "g", "q.png"],
    ["search", "--index", "codes.faiss", "--ckpt", "c.ckpt", "q.png"],
    ["serve", "--gallery", "g"],
    ["sweep", "zs_sbir_losses"],
    ["data", "make"],
    ["data", "preview", "d", "--out", "s.png"],
]


@pytest.mark.parametrize("argv", MINIMAL_ARGV, ids=[" ".join(a[:2]) for a in MINIMAL_ARGV])
def test_the_table_calls_a_function_with_every_argument_it_requires(argv):
    """The parser's destinations are the function's parameter names: a required one the parser does not
    give would fail only when a user runs the command."""
    import inspect

    from sketchquant.app import cli
    from sketchquant.core.lazy import load_object

    args = cli._parser().parse_args(argv)
    params = inspect.signature(load_object(cli.target(args))).parameters.values()
    required = {
        p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    assert required <= set(vars(args)), f"{argv}: the parser gives no {sorted(required - set(vars(args)))}"


def test_legacy_forms_choose_the_legacy_functions():
    from sketchquant.app import cli

    parser = cli._parser()
    assert cli.target(parser.parse_args(["index", "codes.npz", "--out", "x"])).endswith("export:build_index")
    assert cli.target(parser.parse_args(["search", "--index", "i", "--ckpt", "c", "q"])).endswith(
        "export:search"
    )
    assert cli.target(parser.parse_args(["search", "--gallery", "g", "q"])).endswith("search:search_gallery")


def test_a_command_is_imported_with_the_collector_paused_and_runs_with_it_on(monkeypatch):
    """``load_command`` pauses the cyclic collector while the command's modules load (start-up), and leaves
    it as it found it: on for the command itself, off when the caller had it off."""
    import gc

    from sketchquant.app import cli

    seen = []
    monkeypatch.setattr(cli, "load_object", lambda name: seen.append((name, gc.isenabled())) or print)
    was = gc.isenabled()
    try:
        gc.enable()
        assert cli.load_command("a:b") is print and gc.isenabled()
        gc.disable()
        cli.load_command("c:d")
        assert not gc.isenabled()
    finally:
        (gc.enable if was else gc.disable)()
    assert seen == [("a:b", False), ("c:d", False)]


@pytest.mark.parametrize("argv, code", [(["config", "zs_sbir"], 0), (["config", "no_such_experiment"], 2)])
def test_the_console_script_exits_with_the_commands_code(argv, code):
    """``python -m sketchquant`` (and the console script: both call ``cli.entry``) exits with what the
    command returned, its output flushed although the interpreter's last collection is skipped."""
    out = subprocess.run([sys.executable, "-m", "sketchquant", *argv], capture_output=True, text=True)
    assert out.returncode == code
    if code == 0:
        assert out.stdout.startswith("experiment: zs_sbir\n") and "\nmodel:\n" in out.stdout
    else:
        assert out.stderr.count("\n") == 1 and "no_such_experiment" in out.stderr
