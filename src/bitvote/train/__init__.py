"""Training and evaluation: ``train(TrainConfig(...))``, ``evaluate``, checkpoints, the demo.

One module per job: :mod:`.loop` (the run), :mod:`.checkpoint` (atomic, ``weights_only``
checkpoints), :mod:`.optim` (Adam, ReActNet's weight-decay rule, LR schedules), :mod:`.kd`
(ReActNet's distribution loss), :mod:`.progress` (progress bar, CSV log), :mod:`.distributed`
(torchrun / DDP glue), :mod:`.demo` (the README's main job).
"""

from .checkpoint import load as load_checkpoint
from .checkpoint import load_model, model_checkpoint, save as save_checkpoint, set_binary_weights
from .kd import distribution_loss
from .loop import TrainConfig, evaluate, evaluate_checkpoint, train

__all__ = ["TrainConfig", "train", "evaluate", "evaluate_checkpoint", "load_checkpoint", "load_model",
           "model_checkpoint", "save_checkpoint",
           "set_binary_weights", "distribution_loss"]
