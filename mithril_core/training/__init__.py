"""Training: ``TrainModel`` (losses, regularization, metrics -> ``final_cost``),
backend-agnostic optimizers, a ``fit`` loop and safetensors checkpoints."""

from mithril_core.training.checkpoint import load_checkpoint, save_checkpoint
from mithril_core.training.fit import FitResult, fit
from mithril_core.training.optimizers import SGD, Adam, AdamW, Optimizer
from mithril_core.training.train_model import L1, L2, TrainModel

__all__ = [
    "L1",
    "L2",
    "SGD",
    "Adam",
    "AdamW",
    "FitResult",
    "Optimizer",
    "TrainModel",
    "fit",
    "load_checkpoint",
    "save_checkpoint",
]
