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


def prepare_jax(name, cpu_devices, mixed_precision):
    """What JAX reads when it starts: the host-device split of ``--cpu_devices`` (``XLA_FLAGS``;
    TensorFlow splits its CPU at run time) and, for ``--mixed_precision=float64``, 64-bit
    types, without which JAX computes a float64 policy in float32."""
    if name != "jax":
        return
    if cpu_devices > 1 and running() is None:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cpu_devices}".strip()
    if mixed_precision == "float64":
        os.environ["JAX_ENABLE_X64"] = "1"
        if "jax" in sys.modules:
            sys.modules["jax"].config.update("jax_enable_x64", True)


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
