"""Choosing the Keras backend, before Keras is imported (no Keras, TensorFlow or JAX here).

Keras reads ``KERAS_BACKEND`` once, when it is first imported; ``--backend`` sets it for the
command line, after every flag has been validated, so a bad flag still costs a fraction of a
second.  TensorFlow prints start-up lines on stderr on some CPUs (oneDNN, CPU features,
"All log messages before absl::InitializeLog()") before its own log level applies; the
command line imports the backend with stderr held aside, so a one-line error stays one line.
"""

import importlib.util
import json
import os
import sys
import tempfile

from keras_ffl.errors import ConfigError

#: In order of preference when nothing chooses: TensorFlow is the fastest on CPUs, JAX the GPU
#: path where TensorFlow has no CUDA build.
BACKENDS = ("tensorflow", "jax", "torch")
INSTALL = {"tensorflow": "pip install 'keras-ffl[cpu]' (or [gpu])", "jax": "pip install 'keras-ffl[jax]'",
           "torch": "pip install torch"}


def quiet_tensorflow():
    """Hide TensorFlow's C++ info logs (call before TensorFlow is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def installed(name):
    """Whether the package of backend ``name`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def keras_json_backend():
    """The backend Keras's own config file names ($KERAS_HOME/keras.json, else
    ~/.keras/keras.json), or ""."""
    folder = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(folder, "keras.json")) as f:
            return str(json.load(f).get("backend", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def resolve(flag_value=""):
    """The backend a run uses: ``--backend``, else ``$KERAS_BACKEND`` (either must be installed),
    else the one Keras already runs in this process, else the one keras.json names if it is
    installed (Keras writes "tensorflow" there on first import, installed or not), else the
    first installed of TensorFlow, JAX and PyTorch."""
    chosen = (flag_value or os.environ.get("KERAS_BACKEND") or "").strip().lower()
    if chosen:
        if chosen not in BACKENDS:
            raise ConfigError(f"unknown backend '{chosen}' (--backend or KERAS_BACKEND): choose from "
                              f"{', '.join(BACKENDS)}")
        if running() != chosen and not installed(chosen):
            raise ConfigError(f"the {chosen} backend is not installed here: {INSTALL[chosen]}, or choose another "
                              "with --backend or KERAS_BACKEND")
        return chosen
    if running():
        return running()
    for name in (keras_json_backend(), *BACKENDS):
        if name in BACKENDS and installed(name):
            return name
    raise ConfigError(f"no Keras backend is installed: {INSTALL['tensorflow']} or {INSTALL['jax']}")


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

            if name == "tensorflow" or installed("tensorflow"):
                # On JAX or PyTorch too: Keras, tfds or the data pipeline import it later otherwise,
                # and its start-up lines would come then.
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
