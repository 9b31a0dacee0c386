"""The layout of a run directory (model_dir) and the guard that keeps runs from mixing."""

import os

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
