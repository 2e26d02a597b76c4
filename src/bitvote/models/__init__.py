"""The model zoo: ``create(name, **kwargs)``, ``names()``, ``set_voter(model, spec)``."""

from . import resnet  # noqa: F401  (registers the ResNet-18 family)
from .registry import create, names, register, set_voter, voter_layers

__all__ = ["create", "names", "register", "set_voter", "voter_layers"]
