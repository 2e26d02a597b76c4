"""Training and evaluation: ``train(TrainConfig(...))``, ``evaluate``, checkpoints, conversion.

One module per job: :mod:`.loop` (the run), :mod:`.checkpoint` (atomic, ``weights_only``
checkpoints), :mod:`.optim` (Adam, ReActNet's weight-decay rule, LR schedules), :mod:`.kd`
(ReActNet's distribution loss), :mod:`.progress` (progress bar, CSV log), :mod:`.distributed`
(torchrun / DDP glue), :mod:`.convert` (a trained model with a voter swapped in, BN
recalibration). The experiments built from these live in :mod:`bitvote.experiments`.
"""

from .checkpoint import load as load_checkpoint
from .checkpoint import load_model, model_checkpoint, save as save_checkpoint, set_binary_weights
from .kd import distribution_loss
from .loop import TrainConfig, check_config, device, evaluate, evaluate_checkpoint, load_for_evaluation, train

__all__ = ["TrainConfig", "train", "evaluate", "evaluate_checkpoint", "load_checkpoint", "load_model",
           "model_checkpoint", "save_checkpoint",
           "set_binary_weights", "distribution_loss", "device", "check_config", "load_for_evaluation"]
