"""LightningModules (method A: :mod:`.quantization`, method B: :mod:`.zero_shot_sketch`), their shared
base (:mod:`.base`), their config dataclasses (the torch-free :mod:`.config`) and, under
``components/``, their pure-torch parts. Import each from its module: the package itself imports
nothing, so ``import sketchquant.lightning_modules.config`` imports no torch."""

# one name only (two copies of a class break isinstance and registries)
if __name__ != "sketchquant.lightning_modules":
    raise ImportError(f"import this folder as sketchquant.lightning_modules, not as {__name__}")
