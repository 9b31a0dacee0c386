"""The layout of a run directory (model_dir) and the guard that keeps runs from mixing."""

import math
import os
import shutil

from keras_ffl.config import Config, ConfigError

CONFIG = "config.json"
REPORT = "report.json"
WEIGHTS = "model.weights.h5"
LAST_CHECKPOINT = os.path.join("checkpoints", "last.weights.h5")
BACKUP = "backup"
HISTORY = "history.csv"
TENSORBOARD = "tensorboard"


def path(model_dir, name):
    return os.path.join(model_dir, name)


def claim(config):
    """Checks that ``config.model_dir`` is free or holds an unfinished run of the same config.

    Returns True when resuming.  Raises ConfigError (nothing is touched) for a different
    configuration or a finished run, so no earlier result is ever overwritten.
    """
    model_dir = config.model_dir
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ConfigError(f"--model_dir {model_dir} exists and is not a directory")
    config_path = path(model_dir, CONFIG)
    if not os.path.exists(config_path):
        return False
    previous = Config.load(config_path)
    diff = config.differences(previous)
    if diff:
        raise ConfigError(
            f"{model_dir} holds a run with a different configuration (differs in: {', '.join(diff)}); "
            "use a new --model_dir"
        )
    if os.path.exists(path(model_dir, REPORT)):
        raise ConfigError(
            f"{model_dir} holds a finished run: evaluate it with 'python -m keras_ffl.evaluate "
            f"--model_dir={model_dir}' or train into a new --model_dir"
        )
    return True


def find_weights(model_dir):
    for name in (WEIGHTS, LAST_CHECKPOINT):
        candidate = path(model_dir, name)
        if os.path.exists(candidate):
            return candidate
    raise ConfigError(f"no weights in {model_dir} (looked for {WEIGHTS} and {LAST_CHECKPOINT})")


def check_writable(model_dir):
    """ConfigError unless ``model_dir`` can be created and written (before any work)."""
    probe = path(model_dir, f".write-test-{os.getpid()}")
    try:
        os.makedirs(model_dir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"--model_dir {model_dir} is not writable: {e.strerror or e}") from None


#: Files of a model's size a run keeps at once: two resume checkpoints, the per-epoch
#: checkpoint, the final weights, and one being written.
CHECKPOINT_COPIES = 5


def check_free_space(model_dir, model):
    """ConfigError when the disk under ``model_dir`` cannot hold the run's checkpoints."""
    variables = list(model.weights) + [v for optimizer in model.optimizers for v in optimizer.variables]
    checkpoint = sum(math.prod(int(d) for d in v.shape) * 4 for v in variables)
    needed = CHECKPOINT_COPIES * checkpoint
    free = shutil.disk_usage(model_dir).free
    if free < needed:
        raise ConfigError(
            f"not enough disk space for {model_dir}: its checkpoints need about {needed / 2**20:.0f} MB, "
            f"{free / 2**20:.0f} MB free"
        )

