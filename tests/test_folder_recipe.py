"""``zs_sbir_folder``: the recipe the README sends users with their own folder to."""

from __future__ import annotations

from pytorch_lightning.callbacks import EarlyStopping

from sketchquant.app.build import build_callbacks
from sketchquant.app.methods import compose


def test_folder_recipe_settings_and_early_stopping_on_seen_classes(tmp_path):
    cfg = compose("zs_sbir_folder", [f"data.root={tmp_path}"])
    assert cfg.data.image_size == 160 and cfg.data.auto_generate is False
    assert (cfg.model.optim.lr, cfg.model.optim.head_lr_mult, cfg.model.lambda_kd) == (3e-4, 10.0, 0.0)
    assert cfg.monitor == "val/map_all" and cfg.early_stop_patience == 3
    assert (cfg.model.freeze_bn, cfg.model.head_warmup_epochs, cfg.model.weight_ensemble) == (True, 2, 1.0)
    stops = [c for c in build_callbacks(cfg, tmp_path, progress_bar=False) if isinstance(c, EarlyStopping)]
    assert len(stops) == 1 and stops[0].monitor == "val/map_all" and stops[0].patience == 3
    assert not [
        c
        for c in build_callbacks(compose("zs_sbir", []), tmp_path, progress_bar=False)
        if isinstance(c, EarlyStopping)
    ]
