"""Lightning callbacks: the α(t) ramp, teacher distillation, retrieval evaluation, the NaN guard (names load
on first use, so a config schema from :mod:`.config` imports no Lightning)."""

# one name only (two copies of a class break isinstance and registries)
if __name__ != "sketchquant.callbacks":
    raise ImportError(f"import this folder as sketchquant.callbacks, not as {__name__}")


from sketchquant.core.lazy import lazy_exports

_EXPORTS = {
    "AlphaRamp": ".alpha_ramp",
    "AtomicCheckpointIO": ".atomic_checkpoint",
    "EpochSeed": ".epoch_seed",
    "EpochSummary": ".epoch_summary",
    "ExactResume": ".exact_resume",
    "LastCheckpoint": ".last_checkpoint",
    "NaNGuard": ".nan_guard",
    "NonFiniteLossError": ".nan_guard",
    "RetrievalEvaluator": ".retrieval_evaluator",
    "RunStopped": ".last_checkpoint",
    "TeacherDistillation": ".teacher_distillation",
    "alpha_schedule": ".alpha_ramp",
    "atomic_torch_save": ".atomic_checkpoint",
    "epoch_seed": ".epoch_seed",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
