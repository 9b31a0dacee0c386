"""The one list of methods.  Adding a method: its pair of files (``<name>.py``,
``<name>_options.py``) and its name here; nothing else in the package names it.

Keras-free: the command line validates against it before importing TensorFlow or JAX.
"""

import importlib

from keras_ffl.errors import suggestion

#: In the order ``--help``, ``bench --suite`` and ``reproduce`` show them.
NAMES = ("ffl", "dml", "one", "afd", "ffcl", "vanilla", "kd", "cl_ilr", "okddip", "kdcl", "mcl_okd", "pcl")

#: What ``--method`` is when no flag or flagfile says (the library's namesake).
DEFAULT = "ffl"

_DECLARATIONS = {}


def declarations():
    """``{name: options class}``, every registered method, in ``NAMES`` order."""
    if not _DECLARATIONS:
        for name in NAMES:
            module = importlib.import_module(f"keras_ffl.methods.{name}_options")
            declared = [v for v in vars(module).values()
                        if isinstance(v, type) and getattr(v, "NAME", "") == name and v.__module__ == module.__name__]
            if len(declared) != 1:
                raise RuntimeError(f"{module.__name__} must declare exactly one MethodOptions with NAME '{name}'")
            _DECLARATIONS[name] = declared[0]
    return dict(_DECLARATIONS)


def find(name):
    """The options class of ``name``, or None."""
    return declarations().get(name)


def get(name):
    """The options class of ``name``; ConfigError naming the nearest methods otherwise."""
    from keras_ffl.errors import ConfigError

    declaration = find(name)
    if declaration is None:
        raise ConfigError(f"unknown --method '{name}'{suggestion(name, NAMES)}: choose from {', '.join(NAMES)}")
    return declaration


def model_class(name):
    """The ``keras.Model`` subclass of ``name`` (imports Keras)."""
    module, _, attribute = get(name).MODEL.partition(":")
    return getattr(importlib.import_module(module), attribute)


def baseline():
    """The name of the CE-only method every other one is compared with."""
    return next(name for name, d in declarations().items() if d.BASELINE)
