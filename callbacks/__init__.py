"""Lightning callbacks: the α(t) ramp (:mod:`.alpha_ramp`), teacher distillation
(:mod:`.teacher_distillation`), retrieval evaluation (:mod:`.retrieval_evaluator`, its config in the
torch-free :mod:`.config`), the NaN guard, exact resume and checkpoint writing. Import each from its
module (``from sketchquant.callbacks.alpha_ramp import AlphaRamp``): the package itself imports nothing."""

# one name only (two copies of a class break isinstance and registries)
if __name__ != "sketchquant.callbacks":
    raise ImportError(f"import this folder as sketchquant.callbacks, not as {__name__}")
