"""Config composition, overrides and the errors a typo must produce (before any work starts)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from sketchquant.app.methods import compose, from_container
from sketchquant.core.config import ConfigError, parse_overrides, to_container


def test_experiment_picks_group_choices_and_body_wins():
    cfg = compose("zs_sbir")
    assert cfg.experiment == "zs_sbir"
    assert cfg.data.kind == "sketch_photo" and cfg.data.root == "data/glyphs"
    assert cfg.model.name == "zs_sbir" and cfg.model.embed_dim == 512
    assert cfg.trainer.accelerator == "cpu"
    # the experiment body overrides the model group file (lr 1e-4 in model/zs_sbir.yaml)
    assert cfg.model.optim.lr == pytest.approx(1e-3) and cfg.model.optim.schedule == "cosine"


def test_dotted_overrides_and_types():
    cfg = compose(
        "zs_sbir", ["trainer.max_epochs=3", "model.lambda_da=0.5", "eval.map_at=[all,100]", "seed=7"]
    )
    assert cfg.trainer.max_epochs == 3 and isinstance(cfg.trainer.max_epochs, int)
    assert cfg.model.lambda_da == 0.5
    assert list(cfg.eval.map_at) == ["all", 100]
    assert cfg.seed == 7


def test_group_choice_override_swaps_file():
    cfg = compose("zs_sbir", ["logger=wandb", "trainer=default"])
    assert cfg.logger.name == "wandb" and cfg.logger.project == "sketchquant"
    assert cfg.trainer.accelerator == "auto"
    # the experiment body still goes on top of the swapped group
    assert cfg.trainer.max_epochs == 8


def test_typo_key_names_key_and_suggests():
    with pytest.raises(ConfigError) as err:
        compose("zs_sbir", ["trainer.max_epohcs=1"])
    msg = str(err.value)
    assert "trainer.max_epohcs" in msg and "did you mean 'max_epochs'" in msg and "allowed keys" in msg


def test_nested_typo_names_full_path():
    with pytest.raises(ConfigError, match=r"model\.optim\.lrr.*did you mean 'lr'"):
        compose("zs_sbir", ["model.optim.lrr=0.1"])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError) as err:
        compose("zs_sbir", ["trainer.max_epochs=abc"])
    assert "trainer.max_epochs" in str(err.value) and "'abc'" in str(err.value)
    assert "Integer" in str(err.value)


def test_unknown_group_choice_lists_choices():
    with pytest.raises(ConfigError) as err:
        compose("zs_sbir", ["data=glyhps"])
    msg = str(err.value)
    assert "'glyhps'" in msg and "group 'data'" in msg and "did you mean 'glyphs'" in msg and "sketchy" in msg


def test_unknown_experiment():
    with pytest.raises(ConfigError, match=r"unknown experiment 'zs_sbri'.*did you mean 'zs_sbir'"):
        compose("zs_sbri")


def test_missing_required_value():
    with pytest.raises(ConfigError, match=r"missing required config value\(s\): data\.root"):
        compose("zs_sbir_sketchy")
    cfg = compose("zs_sbir_sketchy", ["data.root=/somewhere"])
    assert cfg.data.layout == "sake" and cfg.data.image_size == 224 and cfg.trainer.max_epochs == 20


def test_bad_choice_value():
    with pytest.raises(ConfigError, match=r"'eval.protocol' is 'sbri'; did you mean 'sbir'"):
        compose("zs_sbir", ["eval.protocol=sbri"])


def test_model_data_mismatch():
    with pytest.raises(ConfigError, match="model 'quantization' needs data of kind 'images'"):
        compose("zs_sbir", ["model=quantization"])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["trainer.max_epochs"])


def test_config_round_trip_through_container():
    cfg = compose("quantization", ["model.bits=4"])
    again = from_container(to_container(cfg), ["trainer.max_epochs=2"])
    assert again.model.bits == 4 and again.trainer.max_epochs == 2
    assert OmegaConf.to_container(again.model.alpha) == OmegaConf.to_container(cfg.model.alpha)
    with pytest.raises(ConfigError, match="cannot be changed"):
        from_container(to_container(cfg), ["data=glyphs"])


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "sketchquant.app.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_config_prints_what_train_would_use():
    out = _cli("config", "zs_sbir", "trainer.max_epochs=3")
    assert out.returncode == 0, out.stderr
    assert "max_epochs: 3" in out.stdout
    printed = OmegaConf.create(out.stdout)
    assert printed == OmegaConf.create(to_container(compose("zs_sbir", ["trainer.max_epochs=3"])))


def test_cli_typo_fails_fast_naming_key():
    start = time.perf_counter()
    out = _cli("train", "zs_sbir", "trainer.max_epohcs=1")
    assert out.returncode == 2
    assert "max_epohcs" in out.stderr and "max_epochs" in out.stderr
    assert time.perf_counter() - start < 60  # no data or model touched


def test_cli_list():
    out = _cli("list")
    assert out.returncode == 0
    assert "experiments:" in out.stdout and "zs_sbir" in out.stdout and "quantization" in out.stdout
    assert "data:" in out.stdout and "glyphs" in out.stdout


def test_a_crash_reaches_the_user_as_one_line(monkeypatch, capsys):
    """Any crash (one in a DDP worker arrives as its traceback's text) prints one line and a hint."""
    from torch.multiprocessing.spawn import ProcessRaisedException

    from sketchquant.app import cli

    worker = "\n-- Process 1 terminated with the following error:\nTraceback (most recent call last):\n"
    worker += '  File "x.py", line 1, in f\nRuntimeError: CUDA out of memory on rank 1\n'
    monkeypatch.delenv("SKETCHQUANT_DEBUG", raising=False)
    for err, line in (
        (ProcessRaisedException(worker, 1, 123), "RuntimeError: CUDA out of memory on rank 1"),
        (RuntimeError("boom\nsecond line"), "RuntimeError: boom"),
    ):

        def fail(args, err=err):
            raise err

        monkeypatch.setattr(cli, "run", fail)
        assert cli.main(["list"]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines == [f"sketchquant list: error: {line}", "(set SKETCHQUANT_DEBUG=1 for the traceback)"]
