import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from sketchquant.callbacks.alpha_ramp import AlphaRamp, alpha_schedule
from sketchquant.core.hooks import AlphaConfig

E5 = math.exp(-5.0)


@pytest.mark.parametrize(
    "t, expected",
    [(0, 0.0), (1.99, 0.0), (2, 0.0), (3, 1.0), (4, 2.0), (5, 3.0), (6, 4.0), (100, 4.0)],
)
def test_linear(t, expected):
    assert alpha_schedule(t, alpha_final=4.0, t1=2, t2=6) == pytest.approx(expected)


@pytest.mark.parametrize(
    "t, expected",
    # x = (t - 2) / 4 clipped to [0, 1]; alpha = 4 exp(-5 (1 - x)^2); t <= T1 gives 4 e^-5 (docs/method.md §A, literally)
    [(0, 4 * E5), (2, 4 * E5), (4, 4 * math.exp(-1.25)), (5, 4 * math.exp(-5 * 0.0625)), (6, 4.0), (50, 4.0)],
)
def test_sigmoid(t, expected):
    assert alpha_schedule(t, alpha_final=4.0, t1=2, t2=6, shape="sigmoid") == pytest.approx(expected)


def test_step_units_are_just_numbers():
    assert alpha_schedule(150, alpha_final=1.0, t1=100, t2=200) == pytest.approx(0.5)


def test_invalid():
    with pytest.raises(ValueError, match="t2 > t1"):
        alpha_schedule(0, alpha_final=1.0, t1=3, t2=3)
    with pytest.raises(ValueError, match="t2 > t1"):
        AlphaRamp(AlphaConfig(t1=5, t2=1))
    with pytest.raises(ValueError, match="shape"):
        alpha_schedule(0, alpha_final=1.0, t1=0, t2=1, shape="cosine")
    with pytest.raises(ValueError, match="unit"):
        AlphaRamp(AlphaConfig(unit="batch"))


class _Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.alpha = None
        self.seen = []  # (epoch, batch_idx, global_step, alpha) at every training step

    def set_penalty_weight(self, value):
        self.alpha = value

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((self.current_epoch, batch_idx, self.global_step, self.alpha))
        return torch.nn.functional.mse_loss(self.layer(x), y) * (1.0 + self.alpha)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader():
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g))
    return DataLoader(data, batch_size=4)  # 2 batches per epoch


def _trainer(ramp, max_epochs):
    return pl.Trainer(
        max_epochs=max_epochs,
        callbacks=[ramp],
        enable_checkpointing=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )


def test_callback_epoch_unit_sets_and_logs():
    ramp = AlphaRamp(AlphaConfig(final=2.0, t1=1, t2=3))
    module = _Tiny()
    trainer = _trainer(ramp, 4)
    trainer.fit(module, _loader())
    alphas = [a for *_, a in module.seen]
    assert alphas == pytest.approx([0, 0, 0, 0, 1, 1, 2, 2])
    assert module.alpha == pytest.approx(2.0)
    assert float(trainer.callback_metrics["train/alpha"]) == pytest.approx(2.0)
    assert ramp.state_dict()["last_t"] == 3 and ramp.state_dict()["last_alpha"] == pytest.approx(2.0)


def test_callback_fractional_epoch_and_step_unit():
    module = _Tiny()
    _trainer(AlphaRamp(AlphaConfig(final=1.0, t1=0, t2=2), fractional=True), 3).fit(module, _loader())
    assert [a for *_, a in module.seen] == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1])
    module = _Tiny()
    _trainer(AlphaRamp(AlphaConfig(final=1.0, t1=1, t2=5, unit="step", shape="sigmoid")), 3).fit(
        module, _loader()
    )
    steps = [s for *_, s, _ in module.seen]
    assert steps == [0, 1, 2, 3, 4, 5]
    expected = [alpha_schedule(s, alpha_final=1.0, t1=1, t2=5, shape="sigmoid") for s in steps]
    assert [a for *_, a in module.seen] == pytest.approx(expected)
    assert expected[0] == pytest.approx(E5) and expected[-1] == pytest.approx(1.0)


def test_resume_restores_state(tmp_path):
    ramp = AlphaRamp(AlphaConfig(final=3.0, t1=0, t2=3))
    module = _Tiny()
    trainer = _trainer(ramp, 2)
    trainer.fit(module, _loader())
    assert [a for *_, a in module.seen] == pytest.approx([0, 0, 1, 1])
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)["callbacks"]["AlphaRamp"]
    assert saved["alpha_final"] == 3.0 and saved["last_t"] == 1 and saved["last_alpha"] == pytest.approx(1.0)

    # a fresh callback with other parameters: the checkpoint's schedule wins (with a warning)
    resumed = AlphaRamp(AlphaConfig(final=100.0, t1=5, t2=6))
    module2 = _Tiny()
    with pytest.warns(UserWarning, match="alpha_final"):
        _trainer(resumed, 5).fit(module2, _loader(), ckpt_path=str(ckpt))
    assert (resumed.alpha_final, resumed.t1, resumed.t2) == (3.0, 0, 3)
    epochs = [e for e, *_ in module2.seen]
    assert epochs == [2, 2, 3, 3, 4, 4]
    assert [a for *_, a in module2.seen] == pytest.approx([2, 2, 3, 3, 3, 3])
    assert resumed.last_t == 4 and resumed.last_alpha == pytest.approx(3.0)
