"""keras_ffl: online mutual knowledge distillation for Keras 3 (TensorFlow and JAX).

The public API, imported on first use so that ``import keras_ffl`` (and the command line's
flag validation) stays free of TensorFlow and JAX::

    import keras
    from keras_ffl import FFL, backbones

    nets = [backbones.build_network("resnet32", (32, 32, 3), 100, name=f"net{k}") for k in range(2)]
    model = FFL(nets)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True))
    model.fit(x_train, y_train, epochs=300, batch_size=128)

Methods: ``FFL``, ``DML``, ``ONE``, ``AFD``, ``FFCL``, ``Vanilla``, ``OfflineKD``, and those
users compare them with: ``CLILR``, ``OKDDip``, ``KDCL``, ``MCLOKD``, ``PCL``.  Modules:
``backbones``, ``losses``, ``layers``, ``zoo``, ``build`` (the command line's Config path).
"""

import importlib

__version__ = "0.2.0"

_METHODS = ("FFL", "DML", "ONE", "AFD", "FFCL", "Vanilla", "OfflineKD", "CLILR", "OKDDip", "KDCL", "MCLOKD", "PCL",
            "OnlineDistiller")
_MODULES = ("backbones", "losses", "layers", "methods", "zoo", "build", "optimizers", "data", "export")

__all__ = [*_METHODS, *_MODULES, "OptimizerGroup", "__version__"]


def __getattr__(name):
    if name in _METHODS:
        return getattr(importlib.import_module("keras_ffl.methods"), name)
    if name == "OptimizerGroup":
        return importlib.import_module("keras_ffl.optimizers").OptimizerGroup
    if name in _MODULES:
        return importlib.import_module(f"keras_ffl.{name}")
    raise AttributeError(f"module 'keras_ffl' has no attribute '{name}'")


def __dir__():
    return sorted(__all__)
