"""Multi-process (DDP) behaviour on CPU: 2-process training of both experiments, 1- vs 2-process evaluation
of one checkpoint (identical metrics on an odd-sized test set, so the DistributedSampler pads), rank-0-only
writing of the run folder, and the run-folder name that every process of a torchrun/SLURM job derives.

The 2-process runs go through the CLI in a subprocess (``python -m sketchquant.app.cli``): ``strategy=ddp``
re-launches ``sys.argv`` (inside pytest that would be pytest itself), and spawn/fork inside the pytest
process would drag the test session into the workers. Strategies covered: ``ddp`` (re-launched script:
the workers find the run folder through ``SKETCHQUANT_RUN_DIR``), ``ddp_fork`` and ``ddp_spawn`` (fit and
test each run in fresh worker processes).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_values

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 600

# method B: 8 glyph classes, 3 unseen; the test split is 3×6 sketches + 3×7 photos = 39 items (odd: with
# 2 processes the DistributedSampler pads one duplicate) and the gallery holds 21 photos (odd).
ZS_TINY = tiny_values(
    "zs_sbir",
    **{"data.generator.sketches_per_class": 6, "eval.grid": "true", "trainer.log_every_n_steps": 1},
)
# method A: 5 classes of multi-label scenes; query 9 + database 21 (odd gallery)
QUANT_TINY = tiny_values(
    "quantization",
    **{
        "data.generator.num_train": 48,
        "data.generator.num_query": 9,
        "data.generator.num_database": 21,
        "data.batch_size": 12,
        "eval.grid": "true",
        "trainer.log_every_n_steps": 1,
    },
)
TWO_CPU = {"trainer.accelerator": "cpu", "trainer.devices": 2}


def _overrides(values: dict) -> list[str]:
    return [f"{k}={v}" for k, v in values.items()]


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_", "SKETCHQUANT_RUN_"))
        and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        HF_HUB_OFFLINE="1",
        WANDB_MODE="offline",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        SKETCHQUANT_DEBUG="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "sketchquant.app.cli", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"sketchquant {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
            f"{proc.stderr[-8000:]}"
        )
    return proc


def _train(experiment: str, tmp: Path, values: dict) -> Path:
    """Train through the CLI; return the single run folder it made."""
    _cli("train", experiment, f"run_dir={tmp / 'runs'}", *_overrides(values), cwd=tmp)
    runs = sorted((tmp / "runs" / experiment).iterdir())
    assert len(runs) == 1, f"the processes disagreed on the run folder: {runs}"
    return runs[0]


def _csv_columns_and_rows(path: Path) -> tuple[set[str], list[dict]]:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    return set(rows[0]) if rows else set(), rows


def _check_run_folder(run: Path, *, tested: bool, monitor: str) -> None:
    """Rank 0 alone wrote the run folder, and nothing of fit was lost to test (fresh workers)."""
    names = sorted(p.name for p in run.iterdir())
    assert names.count("config.yaml") == 1 and not [n for n in names if n.startswith("config.resume")]
    assert (run / "metrics.csv").is_file() and (run / "train.log").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    # metrics.csv keeps the training/validation rows after the test run appended its own
    columns, rows = _csv_columns_and_rows(run / "metrics.csv")
    assert any(c.startswith("train/") for c in columns) and monitor in columns
    assert any(r.get(monitor) for r in rows)
    if tested:
        assert any(c.startswith("test/") for c in columns)
    # train.log: one header line, the workers' epoch summary (written by rank 0 only: once)
    text = (run / "train.log").read_text()
    assert text.count("INFO sketchquant: run folder:") == 1
    assert text.count("epoch 1/1") == 1, text[-2000:]
    results = json.loads((run / "results.json").read_text())
    assert monitor in results["val"], results  # best score came back from the worker processes
    assert bool(results["metrics"]) == tested


# ----------------------------------------------------------------------------------------------------------
# training with 2 processes


@pytest.fixture(scope="module")
def zs_ddp_run(tmp_path_factory) -> tuple[Path, Path]:
    """``strategy=ddp``: the CLI is re-launched for rank 1, which finds the run folder via the environment."""
    tmp = tmp_path_factory.mktemp("zs_ddp")
    values = {**ZS_TINY, "data.root": tmp / "glyphs", **TWO_CPU, "trainer.strategy": "ddp"}
    return tmp, _train("zs_sbir", tmp, values)


@pytest.mark.slow
def test_zs_sbir_two_processes_ddp(zs_ddp_run):
    _, run = zs_ddp_run
    _check_run_folder(run, tested=True, monitor="val/map_all")
    results = json.loads((run / "results.json").read_text())
    assert {"test/map_all", "test/proto/map_all", "test/fused/map_all"} <= set(results["metrics"])
    assert results["metrics"]["test/num_queries"] == 18  # the padded duplicate was dropped


@pytest.mark.slow
@pytest.mark.parametrize(
    "lambda_kd, lambda_da",
    [(0.0, 0.0), (0.0, 0.1), (1.0, 0.0)],
    ids=["CE", "CE+DA", "CE+KD"],  # CE+KD+DA (the default) is test_zs_sbir_two_processes_ddp
)
def test_every_ablation_row_trains_under_ddp(tmp_path, lambda_kd, lambda_da):
    """Without KD the ImageNet head is not built: DDP finds no parameter outside the loss (it used to stop
    at the first step with "parameters that were not used in producing the loss")."""
    values = {
        **ZS_TINY,
        "data.root": tmp_path / "glyphs",
        **TWO_CPU,
        "trainer.strategy": "ddp_fork",
        "model.lambda_kd": lambda_kd,
        "model.lambda_da": lambda_da,
        "test_after_fit": "false",
        "eval.grid": "false",
    }
    run = _train("zs_sbir", tmp_path, values)
    _check_run_folder(run, tested=False, monitor="val/map_all")
    _, rows = _csv_columns_and_rows(run / "metrics.csv")
    kd = [float(r["train/kd_epoch"]) for r in rows if r.get("train/kd_epoch")]
    assert kd and (all(v == 0.0 for v in kd) if lambda_kd == 0 else all(v > 0 for v in kd))


@pytest.mark.slow
def test_head_warmup_trains_under_ddp(tmp_path):
    """In the warm-up epochs trunk and embedding take no gradient: plain ``ddp_fork`` stops at the second
    step (a reduction never finished); the trainer runs it as ``ddp_fork_find_unused_parameters_true``."""
    values = {
        **ZS_TINY,
        "data.root": tmp_path / "glyphs",
        **TWO_CPU,
        "trainer.strategy": "ddp_fork",
        "model.head_warmup_epochs": 2,
        "trainer.max_epochs": 2,  # one batch per process and epoch: the second epoch's first step is the check
        "test_after_fit": "false",
        "eval.grid": "false",
    }
    run = _train("zs_sbir", tmp_path, values)
    assert "epoch 2/2" in (run / "train.log").read_text()
    assert json.loads((run / "results.json").read_text())["val"]["val/map_all"] >= 0.0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp_fork", "ddp_spawn"])
def test_quantization_two_processes(tmp_path, strategy):
    """Fit and test each run in fresh worker processes: metrics.csv, train.log and the best score survive."""
    values = {
        **QUANT_TINY,
        "data.root": tmp_path / "scenes",
        **TWO_CPU,
        "trainer.strategy": strategy,
        # spawn start-up is the slow part (a fresh interpreter per worker, twice with testing)
        "test_after_fit": str(strategy == "ddp_fork").lower(),
    }
    run = _train("quantization", tmp_path, values)
    _check_run_folder(run, tested=strategy == "ddp_fork", monitor="val/codes/map_1000")
    if strategy == "ddp_fork":
        metrics = json.loads((run / "results.json").read_text())["metrics"]
        assert metrics["test/codes/num_queries"] == 9


# ----------------------------------------------------------------------------------------------------------
# one checkpoint, 1 vs 2 processes


def _evaluate(ckpt: Path, cwd: Path, *extra: str) -> dict[str, float]:
    run = ckpt.parent.parent
    before = set(run.glob("eval-*.json"))
    _cli("evaluate", "--ckpt", str(ckpt), *extra, cwd=cwd)
    new = sorted(set(run.glob("eval-*.json")) - before)
    assert len(new) == 1, new
    time.sleep(1.05)  # eval files are named by the second
    return json.loads(new[0].read_text())["metrics"]


@pytest.mark.slow
def test_evaluate_one_vs_two_processes_identical(zs_ddp_run):
    tmp, run = zs_ddp_run
    ckpt = run / "checkpoints" / "last.ckpt"
    one = _evaluate(ckpt, tmp, "trainer.devices=1", "trainer.strategy=auto")
    two = _evaluate(ckpt, tmp, "trainer.devices=2", "trainer.strategy=ddp_spawn")
    assert one["test/num_queries"] == 18 and "test/map_all" in one and "test/fused/map_all" in one
    assert set(two) == set(one)
    diff = {k: (one[k], two[k]) for k in one if abs(one[k] - two[k]) > 1e-6}
    assert not diff, diff
    # evaluating wrote into the checkpoint's run folder only (no second run folder)
    assert [p.name for p in (tmp / "runs" / "zs_sbir").iterdir()] == [run.name]


# ----------------------------------------------------------------------------------------------------------
# fast checks (no processes): run-folder naming under torchrun / SLURM, the pieces behind the fixes


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("SKETCHQUANT_RUN_DIR", "SKETCHQUANT_RUN_ID", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.setenv(var, "x")  # so that monkeypatch restores the variable, even if a test sets it
        monkeypatch.delenv(var)
    return monkeypatch


def _cfg(tmp_path, *extra: str):
    from sketchquant.app.methods import compose

    return compose("zs_sbir", [f"run_dir={tmp_path}", "data.root=unused", *extra])


@pytest.fixture
def later_clock(monkeypatch):
    """Every ``time.strftime`` call in sketchquant.app.rundir is an hour later than the previous one: processes
    that start later (a second, a midnight) without sleeping in the test."""
    import itertools

    import sketchquant.app.rundir as run

    real, hours, base = time.strftime, itertools.count(), time.time()

    class _Time:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def strftime(fmt, t=None):
            return real(fmt, time.localtime(base + 3600 * next(hours)))

    monkeypatch.setattr(run, "time", _Time())


def _fresh_process_run_dir(cfg, monkeypatch) -> Path:
    """``new_run_dir`` as a separately launched process sees it (no SKETCHQUANT_RUN_DIR from a parent)."""
    from sketchquant.app.rundir import new_run_dir

    monkeypatch.delenv("SKETCHQUANT_RUN_DIR", raising=False)
    return new_run_dir(cfg)


@pytest.mark.parametrize(
    ("var", "value", "leaf"),
    [
        ("SLURM_JOB_ID", "4242", "slurm4242"),
        ("TORCHELASTIC_RUN_ID", "job7", "torchelasticjob7"),
        ("SKETCHQUANT_RUN_ID", "mine", "sketchquantmine"),
    ],
)
def test_run_dir_from_job_id_is_shared_by_all_processes(tmp_path, clean_env, later_clock, var, value, leaf):
    clean_env.setenv(var, value)
    cfg = _cfg(tmp_path, "name=exp1")
    first = _fresh_process_run_dir(cfg, clean_env)
    second = _fresh_process_run_dir(cfg, clean_env)  # another rank / node, starting later
    assert first == second
    assert first.parent == tmp_path / "zs_sbir"
    assert first.name == f"{leaf}-exp1"  # no date: a node starting after midnight agrees too


def test_run_dir_job_id_precedence_and_none(tmp_path, clean_env):
    clean_env.setenv("SLURM_JOB_ID", "11")
    clean_env.setenv("TORCHELASTIC_RUN_ID", "22")
    assert _fresh_process_run_dir(_cfg(tmp_path), clean_env).name == "slurm11"
    clean_env.setenv("SKETCHQUANT_RUN_ID", "33")
    assert _fresh_process_run_dir(_cfg(tmp_path), clean_env).name == "sketchquant33"
    # torchrun without --rdzv-id sets TORCHELASTIC_RUN_ID=none: not a job id, a time stamp instead
    for var in ("SKETCHQUANT_RUN_ID", "SLURM_JOB_ID"):
        clean_env.delenv(var)
    clean_env.setenv("TORCHELASTIC_RUN_ID", "none")
    name = _fresh_process_run_dir(_cfg(tmp_path), clean_env).name
    assert "none" not in name and len(name) == len("20260101-120000")


def test_relaunched_worker_uses_parent_run_dir(tmp_path, clean_env, later_clock):
    """``strategy=ddp`` re-launches the script: the child inherits SKETCHQUANT_RUN_DIR and must use it."""
    from sketchquant.app.rundir import new_run_dir

    parent = new_run_dir(_cfg(tmp_path))
    assert os.environ["SKETCHQUANT_RUN_DIR"] == str(parent)
    assert new_run_dir(_cfg(tmp_path)) == parent  # the child, later, without any job id
    assert _fresh_process_run_dir(_cfg(tmp_path), clean_env) != parent  # (the clock did move on)


def test_metrics_csv_is_appended_not_replaced(tmp_path):
    """Fit and test in fresh processes (ddp_spawn/ddp_fork), or a resumed run, each make a new CSV writer."""
    from sketchquant.app.loggers import AppendingCSVLogger

    first = AppendingCSVLogger(save_dir=str(tmp_path), name="", version="")
    first.log_metrics({"train/loss": 1.0, "val/map_all": 0.5}, step=0)
    first.save()
    second = AppendingCSVLogger(save_dir=str(tmp_path), name="", version="")  # a new process
    second.log_metrics({"test/map_all": 0.25}, step=1)
    second.save()
    columns, rows = _csv_columns_and_rows(tmp_path / "metrics.csv")
    assert {"train/loss", "val/map_all", "test/map_all", "step"} <= columns
    assert [r["val/map_all"] for r in rows] == ["0.5", ""] and rows[1]["test/map_all"] == "0.25"


def test_best_score_read_from_checkpoint_when_worker_kept_it(tmp_path):
    """ddp_spawn/ddp_fork send back only ``best_model_path``; the score is read from that checkpoint."""
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint

    from sketchquant.app.train import best_model_score

    best = tmp_path / "best.ckpt"
    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val/map_all", mode="max")
    cb.best_model_path, cb.best_model_score = str(best), torch.tensor(0.75)
    torch.save({"callbacks": {cb.state_key: cb.state_dict()}}, best)
    assert best_model_score(cb, str(best)) == pytest.approx(0.75)
    main_process = ModelCheckpoint(dirpath=tmp_path, monitor="val/map_all", mode="max")
    main_process.best_model_path = str(best)  # what the launcher restores
    assert best_model_score(main_process, str(best)) == pytest.approx(0.75)
    assert best_model_score(None, "") is None


def test_train_log_handler_is_per_run_and_idempotent(tmp_path):
    """Re-attaching in a ddp_spawn worker adds nothing twice; a later run in the same process logs only to
    its own train.log."""
    import logging

    from sketchquant.app.rundir import RUN_LOG_LOGGERS, setup_file_logging

    log = logging.getLogger("sketchquant")
    try:
        setup_file_logging(tmp_path / "run1")
        setup_file_logging(tmp_path / "run1")  # _RunFileLogging.setup in the same process
        ours = [h for h in log.handlers if getattr(h, "sketchquant_run_log", False)]
        assert len(ours) == 1
        setup_file_logging(tmp_path / "run2")
        log.info("second run only")
        assert "second run only" in (tmp_path / "run2" / "train.log").read_text()
        assert "second run only" not in (tmp_path / "run1" / "train.log").read_text()
    finally:
        for name in RUN_LOG_LOGGERS:
            logger = logging.getLogger(name)
            for h in [h for h in logger.handlers if getattr(h, "sketchquant_run_log", False)]:
                logger.removeHandler(h)
                h.close()
