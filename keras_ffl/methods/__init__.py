"""The methods.  Each has one home, a pair of files: ``<name>.py`` (its ``keras.Model``) and
``<name>_options.py`` (its settings and facts, free of Keras); ``registry.NAMES`` lists them.

Importing this package imports no Keras: the model classes are loaded on first use
(``from keras_ffl.methods import FFL``), so the command line validates flags against the
declarations first.
"""

import importlib

from keras_ffl.methods import registry as _registry

#: Public class name -> method name, for ``from keras_ffl.methods import FFL`` (each
#: declaration's ``MODEL``).
_CLASSES = {d.MODEL.rpartition(":")[2]: name for name, d in _registry.declarations().items()}
_BASE = ("OnlineDistiller", "Gradient", "Update")

__all__ = [*_BASE, *_CLASSES, "METHODS"]


def __getattr__(name):
    registry = importlib.import_module("keras_ffl.methods.registry")  # not `from . import`: that asks __getattr__
    if name in _CLASSES:
        return registry.model_class(_CLASSES[name])
    if name in _BASE:
        return getattr(importlib.import_module("keras_ffl.methods.base"), name)
    if name == "METHODS":  # name -> model class, every registered method
        return {method: registry.model_class(method) for method in registry.NAMES}
    raise AttributeError(f"module 'keras_ffl.methods' has no attribute '{name}'")


def __dir__():
    return sorted(__all__)
