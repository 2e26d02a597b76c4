"""The model zoo: ``create(name, **kwargs)``, ``names()``, ``set_voter(model, spec)``."""

from . import reactneta, resnet  # noqa: F401  (register the model families)
from .registry import create, names, register, set_voter, voter_layers

__all__ = ["create", "names", "register", "set_voter", "voter_layers"]
