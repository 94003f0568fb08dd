"""Lightning callbacks: the α(t) ramp, teacher distillation, retrieval evaluation, the NaN guard."""

from callbacks.alpha_ramp import AlphaRamp, alpha_schedule
from callbacks.atomic_checkpoint import AtomicCheckpointIO, atomic_torch_save
from callbacks.epoch_seed import EpochSeed, epoch_seed
from callbacks.epoch_summary import EpochSummary
from callbacks.exact_resume import ExactResume
from callbacks.last_checkpoint import LastCheckpoint, RunStopped
from callbacks.nan_guard import NaNGuard, NonFiniteLossError
from callbacks.retrieval_evaluator import RetrievalEvaluator
from callbacks.teacher_distillation import TeacherDistillation

__all__ = [
    "AlphaRamp",
    "AtomicCheckpointIO",
    "EpochSeed",
    "EpochSummary",
    "ExactResume",
    "LastCheckpoint",
    "NaNGuard",
    "NonFiniteLossError",
    "RetrievalEvaluator",
    "RunStopped",
    "TeacherDistillation",
    "alpha_schedule",
    "atomic_torch_save",
    "epoch_seed",
]
