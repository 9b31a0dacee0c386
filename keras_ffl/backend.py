"""Choosing the Keras backend, before Keras is imported (no Keras, TensorFlow or JAX here).

Keras reads ``KERAS_BACKEND`` once, when it is first imported; ``--backend`` sets it for the
command line, after every flag has been validated, so a bad flag still costs a fraction of a
second.  TensorFlow prints start-up lines on stderr on some CPUs (oneDNN, CPU features,
"All log messages before absl::InitializeLog()") before its own log level applies; the
command line imports the backend with stderr held aside, so a one-line error stays one line.
"""

import os
import sys
import tempfile

from keras_ffl.errors import ConfigError

BACKENDS = ("tensorflow", "jax", "torch")
DEFAULT = "tensorflow"


def resolve(flag_value=""):
    """The backend a run uses: ``--backend``, else ``$KERAS_BACKEND``, else TensorFlow."""
    name = (flag_value or os.environ.get("KERAS_BACKEND") or DEFAULT).strip().lower()
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}' (--backend or KERAS_BACKEND): choose from {', '.join(BACKENDS)}")
    return name


def running():
    """The backend of an already imported Keras, or None."""
    keras = sys.modules.get("keras")
    if keras is None or not hasattr(keras, "backend"):
        return None
    return keras.backend.backend()


def activate(name):
    """Makes ``name`` the backend Keras will load; ConfigError if Keras already runs another."""
    current = running()
    if current is not None and current != name:
        raise ConfigError(f"this process already runs Keras on {current}; the run asks for {name} "
                          f"(set KERAS_BACKEND={name} before Python imports Keras)")
    os.environ["KERAS_BACKEND"] = name


def import_quietly(name):
    """Imports Keras on ``name`` with stderr held aside; what was printed is shown only if the
    import fails."""
    activate(name)
    if running() is not None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import keras  # noqa: F401

            if name == "tensorflow":
                import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
