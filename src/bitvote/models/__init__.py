"""The model zoo: ``create(name, **kwargs)``, ``names()``, ``set_voter(model, spec)``."""

from . import reactneta, resnet  # noqa: F401  (register the model families)
from .registry import (create, names, parse_voter_map, read_voter_map, register, set_voter, spec_for, voter_layers,
                       voter_map_text)

__all__ = ["create", "names", "register", "set_voter", "voter_layers", "spec_for", "parse_voter_map", "read_voter_map",
           "voter_map_text"]
