"""Survive the kill (issue 12): a run killed for real — SIGTERM or SIGKILL, inside an epoch or during
validation, SLURM's SIGUSR1 — and resumed gives the straight run's weights, optimizer and scheduler state
and ``metrics.csv``; broken ``last.ckpt`` files and a full disk.

The subprocess chain runs ``python -m sketchquant train`` through a small wrapper that adds one callback
signalling its own process at a chosen batch (the signal itself is real: SIGKILL gives no chance to clean up).
"""

from __future__ import annotations

import csv
import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides

REPO = Path(__file__).resolve().parents[1]

#: kills the process at (where, epoch, batch): "step" = as the batch starts (the signal arrives during the
#: step), "train" = after the batch's callbacks (a LastCheckpoint write included), "val" = before a
#: validation batch; SQ_KILL="SIGKILL:val:1:0"
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import pytorch_lightning as pl
    import sketchquant.app.build as build

    class Killer(pl.Callback):
        def __init__(self, spec):
            sig, self.where, epoch, batch = spec.split(":")
            self.sig, self.epoch, self.batch = getattr(signal, sig), int(epoch), int(batch)

        def _hit(self, trainer, where, batch_idx):
            if (where, trainer.current_epoch, batch_idx) == (self.where, self.epoch, self.batch):
                if not trainer.sanity_checking:
                    os.kill(os.getpid(), self.sig)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._hit(trainer, "step", batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._hit(trainer, "train", batch_idx)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            self._hit(trainer, "val", batch_idx)

    if __name__ == "__main__":  # not in spawned DataLoader workers
        if os.environ.get("SQ_KILL"):
            original = build.build_callbacks
            build.build_callbacks = lambda *a, **k: [*original(*a, **k), Killer(os.environ["SQ_KILL"])]
        from sketchquant.app.cli import main
        sys.exit(main())
    """
)

SLURM = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NAME": "sketchquant",
    "SLURM_NTASKS": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "localhost",
}


def _overrides(tmp: Path, **extra) -> list[str]:
    # 3 batches per epoch, workers on, default `deterministic`
    return tiny_overrides(
        "zs_sbir",
        tmp,
        seed=3,
        save_top_k=-1,
        test_after_fit="false",
        **{
            "data.num_workers": 2,
            "trainer.max_epochs": 3,
            "trainer.limit_train_batches": 1.0,
            "trainer.log_every_n_steps": 1,
            "trainer.num_sanity_val_steps": 0,
            "eval.prototypes": "false",
        },
        **extra,
    )


def _run(tmp: Path, overrides: list[str], kill: str | None = None, env: dict | None = None):
    script = tmp / "killer.py"
    if not script.exists():
        script.write_text(KILLER)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SKETCHQUANT_RUN"))}
    full_env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(REPO), **(env or {}))
    if kill:
        full_env["SQ_KILL"] = kill
    return subprocess.run(
        [sys.executable, str(script), "train", "zs_sbir", *overrides],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _epoch_rows(run: Path) -> list[dict]:
    """``metrics.csv`` rows holding epoch-level values (train ``*_epoch``/``acc``, ``val/*``)."""
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = []
    for row in rows:
        filled = {k: v for k, v in row.items() if v != ""}
        if any(k.endswith("_epoch") or k.startswith("val/") or k == "train/acc" for k in filled):
            keep.append(filled)
    return keep


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    x = torch.load(a, map_location="cpu", weights_only=False)
    y = torch.load(b, map_location="cpu", weights_only=False)
    assert (x["epoch"], x["global_step"]) == (y["epoch"], y["global_step"]), a.name
    assert x["state_dict"].keys() == y["state_dict"].keys()
    for key in x["state_dict"]:
        torch.testing.assert_close(
            x["state_dict"][key], y["state_dict"][key], rtol=0, atol=0, msg=f"{a.name} {key}"
        )
    for sx, sy in zip(x["optimizer_states"][0]["state"].values(), y["optimizer_states"][0]["state"].values()):
        for key in sx:
            torch.testing.assert_close(sx[key], sy[key], rtol=0, atol=0, msg=f"{a.name} optimizer {key}")
    assert x["lr_schedulers"] == y["lr_schedulers"], a.name


@pytest.mark.slow
def test_killed_and_resumed_run_matches_straight_run(tmp_path):
    """One run interrupted five ways (each resume continues the previous state) ends like a straight run:

    1. SIGTERM during epoch 0's first step → ``last.ckpt`` written at that batch's end, exit 143;
    2. SIGKILL inside epoch 1, one batch after a ``checkpoint.every_n_steps`` write;
    3. SIGTERM during epoch 1's validation (resumes from the mid-epoch checkpoint of 2.);
    4. SLURM's SIGUSR1 during a step of epoch 2: checkpoint at that batch's end, ``scontrol requeue 4242``,
       exit 138; the requeued job (``SLURM_RESTART_COUNT``) continues in ``slurm4242`` without ``resume=``;
    5. ``last.ckpt`` truncated: the resume names it and falls back to ``last.prev.ckpt`` (epoch 1's end).
    """
    straight = _run(tmp_path, _overrides(tmp_path, name="straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.log\n')
    (fake / "scontrol").chmod(0o755)
    env = {**SLURM, "PATH": f"{fake}:{os.environ['PATH']}"}
    args = _overrides(tmp_path, **{"checkpoint.every_n_steps": 2})
    run_dir = tmp_path / "runs" / "zs_sbir" / "slurm4242"
    last = run_dir / "checkpoints" / "last.ckpt"

    def step(kill, restart, expect_rc):
        res = _run(tmp_path, args, kill, {**env, "SLURM_RESTART_COUNT": str(restart)})
        assert res.returncode == expect_rc, f"{kill}: rc {res.returncode}\n{res.stderr[-3000:]}"
        return res

    step("SIGTERM:step:0:0", 0, 128 + signal.SIGTERM)
    ck = torch.load(last, weights_only=False)
    assert (ck["epoch"], ck["global_step"]) == (0, 1)  # written at the interrupted batch, inside epoch 0
    step("SIGKILL:train:1:1", 1, -signal.SIGKILL)
    assert torch.load(last, weights_only=False)["global_step"] == 4  # the every_n_steps write before the kill
    step("SIGTERM:val:1:0", 2, 128 + signal.SIGTERM)
    step("SIGUSR1:step:2:0", 3, 128 + signal.SIGUSR1)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert torch.load(last, weights_only=False)["global_step"] == 7
    assert torch.load(run_dir / "checkpoints" / "last.prev.ckpt", weights_only=False)["global_step"] == 6
    with open(last, "r+b") as fh:  # a broken disk or copy
        fh.truncate(last.stat().st_size // 2)
    res = step(None, 4, 0)
    assert f"cannot resume from {last}" in res.stderr
    assert "truncated or not a checkpoint" in res.stderr

    straight_dir = next((tmp_path / "runs" / "zs_sbir").glob("*-straight"))
    names = sorted(p.name for p in (straight_dir / "checkpoints").glob("best-epoch*.ckpt"))
    assert names == ["best-epoch00.ckpt", "best-epoch01.ckpt", "best-epoch02.ckpt"]
    for name in [*names, "last.ckpt"]:
        _assert_same_checkpoint(straight_dir / "checkpoints" / name, run_dir / "checkpoints" / name)
    assert _epoch_rows(run_dir) == _epoch_rows(straight_dir)
    assert len(_epoch_rows(straight_dir)) == 6  # a train row and a val row per epoch
    # every row (step rows too): nothing lost by the SIGKILL, nothing twice after a resume
    assert (run_dir / "metrics.csv").read_text() == (straight_dir / "metrics.csv").read_text()


# --------------------------------------------------------------------------------------------------
# the pieces, without training


def _fake_training_checkpoint(path: Path, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "state_dict": {}, "loops": {}, "optimizer_states": []}, path)


def test_resume_auto_falls_back_to_previous_checkpoint(tmp_path, caplog):
    from sketchquant.app.methods import compose
    from sketchquant.app.rundir import find_resume
    from sketchquant.core.config import ConfigError

    ckpts = tmp_path / "runs" / "zs_sbir" / "20260101-000000" / "checkpoints"
    _fake_training_checkpoint(ckpts / "last.ckpt", 1)
    _fake_training_checkpoint(ckpts / "last.prev.ckpt", 0)
    cfg = compose("zs_sbir", tiny_overrides("zs_sbir", tmp_path, resume="auto"))
    assert find_resume(cfg)[1] == ckpts / "last.ckpt"

    (ckpts / "last.ckpt").write_bytes((ckpts / "last.ckpt").read_bytes()[:100])  # truncated
    with caplog.at_level("ERROR"):
        run_dir, ckpt = find_resume(cfg)
    assert ckpt == ckpts / "last.prev.ckpt" and run_dir == ckpts.parent
    assert f"cannot resume from {ckpts / 'last.ckpt'}: truncated or not a checkpoint" in caplog.text

    (ckpts / "last.prev.ckpt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="no readable checkpoint"):
        find_resume(cfg)
    # resume=PATH to a broken file: one line naming it
    torch.save({"state_dict": {}}, ckpts / "foreign.ckpt")
    cfg = compose("zs_sbir", tiny_overrides("zs_sbir", tmp_path, resume=str(ckpts / "foreign.ckpt")))
    with pytest.raises(ConfigError, match="foreign.ckpt: not a training checkpoint"):
        find_resume(cfg)


def test_requeued_slurm_job_continues_its_own_folder(tmp_path, monkeypatch):
    from sketchquant.app.methods import compose
    from sketchquant.app.rundir import find_resume

    cfg = compose("zs_sbir", tiny_overrides("zs_sbir", tmp_path))
    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    _fake_training_checkpoint(tmp_path / "runs" / "zs_sbir" / "slurm4242" / "checkpoints" / "last.ckpt", 2)
    _fake_training_checkpoint(tmp_path / "runs" / "zs_sbir" / "slurm9999" / "checkpoints" / "last.ckpt", 5)
    assert find_resume(cfg) is None  # first start of the job: a new run
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert find_resume(cfg)[0] == tmp_path / "runs" / "zs_sbir" / "slurm4242"


def test_checkpoint_write_keeps_previous_and_survives_full_disk(tmp_path, monkeypatch):
    import sketchquant.callbacks.atomic_checkpoint as atomic
    from sketchquant.core.io import DiskFullError

    io = atomic.AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, last)
    io.save_checkpoint({"step": 2}, last)
    assert torch.load(last)["step"] == 2 and torch.load(tmp_path / "last.prev.ckpt")["step"] == 1
    io.save_checkpoint({"step": 1}, tmp_path / "best.ckpt")
    io.save_checkpoint({"step": 2}, tmp_path / "best.ckpt")
    assert not (tmp_path / "best.prev.ckpt").exists()  # only last.ckpt keeps its predecessor

    def full(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.torch, "save", full)
    before = last.read_bytes(), (tmp_path / "last.prev.ckpt").read_bytes()
    with pytest.raises(DiskFullError, match=f"disk full while writing {last}"):
        io.save_checkpoint({"step": 3}, last)
    assert (last.read_bytes(), (tmp_path / "last.prev.ckpt").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt", "last.prev.ckpt"]


def test_samplers_skip_what_a_resumed_epoch_already_trained_on():
    from sketchquant.datamodules.common import EpochTaggedSampler, MixedDomainSampler

    data = list(range(40))
    for make in (
        lambda: EpochTaggedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=5),
        lambda: MixedDomainSampler(data, range(0, 20), range(20, 40), batch_size=6, seed=5),
    ):
        straight = make()
        straight.set_epoch(3)
        order = list(straight)
        resumed = make()
        resumed.set_epoch(3)
        resumed.skip_next(12)
        assert list(resumed) == order[12:]
        assert list(resumed) == order  # one epoch only


def test_metrics_csv_drops_rows_after_checkpoint_and_restores_lost_row(tmp_path):
    from sketchquant.app.loggers import AppendingCSVLogger

    first = AppendingCSVLogger(save_dir=str(tmp_path), name="", version="")
    for step in range(4):
        first.log_metrics({"train/loss_step": float(step)}, step)
    with open(tmp_path / "metrics.csv", "a") as fh:
        fh.write("1\n4,0.")  # an incomplete row, and a row cut short by a kill
    resumed = AppendingCSVLogger(save_dir=str(tmp_path), name="", version="", resuming=True)
    resumed.resume_rows([(1, {"train/loss_step": 1.0}), (1, {"train/loss_epoch": 9.0, "epoch": 0})])
    resumed.log_metrics({"train/loss_step": 2.0}, 2)
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = [(r["step"], r["train/loss_step"], r.get("train/loss_epoch", "")) for r in csv.DictReader(fh)]
    assert rows == [("0", "0.0", ""), ("1", "1.0", ""), ("1", "", "9.0"), ("2", "2.0", "")]


def test_last_checkpoint_writes_inside_epochs_and_stops_on_signal(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from sketchquant.callbacks.last_checkpoint import LastCheckpoint, RunStopped

    saved = []
    progress = SimpleNamespace(ready=0)
    trainer = SimpleNamespace(
        sanity_checking=False,
        global_step=0,
        received_sigterm=False,
        world_size=1,
        is_global_zero=True,
        current_epoch=0,
        num_training_batches=10,
        loggers=[],
        fit_loop=SimpleNamespace(
            epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=progress))
        ),
        save_checkpoint=lambda path: saved.append((trainer.global_step, str(path))),
    )
    before = signal.getsignal(signal.SIGUSR1)
    cb = LastCheckpoint(tmp_path, every_n_steps=3, every_n_minutes=0.0)
    cb.on_fit_start(trainer, None)
    try:
        for step in range(1, 11):  # 10 batches: steps 3, 6, 9 write; 10 is the epoch's last batch
            trainer.global_step, progress.ready = step, step
            cb.on_train_batch_end(trainer, None, None, None, step - 1)
        assert [s for s, _ in saved] == [3, 6, 9] and saved[0][1] == str(tmp_path / "last.ckpt")

        timed = LastCheckpoint(tmp_path, every_n_minutes=1.0)
        timed.on_fit_start(trainer, None)
        trainer.global_step, progress.ready = 11, 1
        timed.on_train_batch_end(trainer, None, None, None, 0)
        assert len(saved) == 3  # a minute has not passed
        timed._last_write -= 61
        timed.on_train_batch_end(trainer, None, None, None, 0)
        assert [s for s, _ in saved][-1] == 11

        trainer.global_step, progress.ready = 12, 2
        os.kill(os.getpid(), signal.SIGUSR1)  # handled: a flag, acted upon at the batch end
        with pytest.raises(RunStopped) as stop:
            timed.on_train_batch_end(trainer, None, None, None, 1)
        assert stop.value.code == 128 + signal.SIGUSR1 and [s for s, _ in saved][-1] == 12
        timed.teardown(trainer, None, "fit")
    finally:
        cb.teardown(trainer, None, "fit")
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler is put back


@pytest.mark.slow
def test_full_disk_during_training_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """ENOSPC while writing epoch 1's last.ckpt: DiskFullError naming it; epoch 0's last.ckpt is intact and
    the run resumes from it once there is space again."""
    import sketchquant.callbacks.atomic_checkpoint as atomic
    from sketchquant.app.methods import compose
    from sketchquant.app.train import train
    from sketchquant.core.io import DiskFullError

    monkeypatch.delenv("SKETCHQUANT_RUN_DIR", raising=False)
    overrides = tiny_overrides(
        "zs_sbir", tmp_path, name="full", test_after_fit="false", **{"trainer.max_epochs": 2}
    )
    real_save, writes = atomic.torch.save, []

    def save(obj, fh):
        if ".last.ckpt." in getattr(fh, "name", ""):
            writes.append(obj["epoch"])
            if len(writes) == 2:
                fh.write(b"half a checkpoint")
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh)

    monkeypatch.setattr(atomic.torch, "save", save)
    with pytest.raises(DiskFullError, match="disk full while writing .*last.ckpt; the previous file"):
        train(compose("zs_sbir", overrides))
    ckpts = next((tmp_path / "runs" / "zs_sbir").glob("*-full")) / "checkpoints"
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["epoch"] == 0
    assert not [p for p in ckpts.iterdir() if p.name.endswith(".tmp")]

    monkeypatch.setattr(atomic.torch, "save", real_save)
    monkeypatch.delenv("SKETCHQUANT_RUN_DIR", raising=False)
    out = train(compose("zs_sbir", [*overrides, "resume=auto"]))
    assert Path(out["run_dir"]) == ckpts.parent
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["epoch"] == 1
