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

Every class Keras deserialises by name (``keras_ffl>FFL``: methods, layers, backbones,
optimisers) is registered as soon as both keras_ffl and Keras are imported, in either order, so
``keras.saving.load_model("ffl.keras")`` works in a new process after ``import keras_ffl``
alone, as after ``import keras_hub``.  Keras is not imported for it: when it is not imported
yet, an import hook registers them once its import ends (and once the outermost keras_ffl
module being imported then ends, so a keras_ffl module that imports Keras never meets its
own half-imported modules).
"""

import importlib
import importlib.abc
import sys

__version__ = "0.2.0"



def _method_classes():
    """Every registered method's class name (its declaration's ``MODEL``; no Keras import)."""
    from keras_ffl.methods import registry

    return tuple(d.MODEL.rpartition(":")[2] for d in registry.declarations().values())


_METHODS = (*_method_classes(), "OnlineDistiller")
_MODULES = ("backbones", "losses", "layers", "methods", "zoo", "build", "optimizers", "data", "export")

__all__ = [*_METHODS, *_MODULES, "OptimizerGroup", "import_keras_quietly", "__version__"]


def import_keras_quietly(backend=""):
    """``keras``, for a script that wants the command line's quiet output: imported with
    TensorFlow's C++ start-up lines held back (TensorFlow 2.21 prints its oneDNN and absl lines
    whatever ``TF_CPP_MIN_LOG_LEVEL`` says; shown if the import fails), its later INFO lines off
    (``TF_CPP_MIN_LOG_LEVEL=2`` unless set) and tf2onnx's NumPy FutureWarning ignored.  Call it
    before anything imports Keras.  A call, not a side effect of ``import keras_ffl``, which
    changes no logging.  ``backend``: as ``--backend`` (default: $KERAS_BACKEND, keras.json,
    the first installed)."""
    import warnings

    from keras_ffl import backend as backends

    backends.quiet_tensorflow()
    warnings.filterwarnings("ignore", category=FutureWarning, module="keras.src.export.tf2onnx_lib")
    backends.import_quietly(backends.resolve(backend))
    return importlib.import_module("keras")


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


# ------------------------------------------------------------ Keras registration
#: The modules whose import registers keras_ffl's serialisable classes with Keras.
_SERIALIZABLE = ("keras_ffl.layers", "keras_ffl.backbones", "keras_ffl.optimizers", "keras_ffl.methods.models")


class _Registration(importlib.abc.MetaPathFinder):
    """Imports ``_SERIALIZABLE`` once Keras is imported and no keras_ffl module is half-way
    through its own import (one that imports Keras at its top would otherwise meet itself
    half-defined).  It only wraps the loaders of ``keras`` and ``keras_ffl.*`` to know when
    their imports end; the modules themselves are untouched."""

    def __init__(self):
        self.depth = 0  # keras_ffl modules being executed right now
        self.pending = False  # Keras is imported, the registration not done yet
        self.done = False
        self.finding = False

    def find_spec(self, fullname, path=None, target=None):
        if self.done or self.finding or not (fullname == "keras" or fullname.startswith("keras_ffl.")):
            return None
        self.finding = True
        try:
            spec = None
            for finder in sys.meta_path:
                if finder is not self and hasattr(finder, "find_spec"):
                    spec = finder.find_spec(fullname, path, target)
                    if spec is not None:
                        break
        finally:
            self.finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _Tracked(spec.loader, self, keras=fullname == "keras")
        return spec

    def register_when_safe(self):
        if self.done or not self.pending or self.depth:
            return
        self.done = True
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            for name in _SERIALIZABLE:
                importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - never break the user's own `import keras`
            import warnings

            warnings.warn(f"keras_ffl could not register its classes with Keras ({type(e).__name__}: {e}); "
                          ".keras files of keras_ffl models need 'import keras_ffl.methods.models' first", stacklevel=2)


class _Tracked(importlib.abc.Loader):
    """A module's own loader, telling ``_Registration`` when the module's import ends."""

    def __init__(self, loader, registration, keras):
        self._loader, self._registration, self._keras = loader, registration, keras

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        registration = self._registration
        registration.depth += not self._keras
        try:
            self._loader.exec_module(module)
        finally:
            registration.depth -= not self._keras
        registration.pending = registration.pending or self._keras
        registration.register_when_safe()

    def __getattr__(self, name):  # get_code, get_source, get_resource_reader...
        return getattr(self._loader, name)


def _register_with_keras():
    keras = sys.modules.get("keras")
    if keras is not None and not getattr(getattr(keras, "__spec__", None), "_initializing", False):
        registration = _Registration()
        registration.pending = True
        registration.register_when_safe()
    elif not any(type(f).__name__ == "_Registration" for f in sys.meta_path):
        sys.meta_path.insert(0, _Registration())


_register_with_keras()
