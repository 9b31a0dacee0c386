"""The layout of a run directory (model_dir) and the guards that keep runs from mixing: a
model_dir holds one configuration, a finished run is never overwritten, and one live process
at a time trains in it (an exclusive lock the operating system drops when the process dies,
so a run killed with ``kill -9`` never blocks the next)."""

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import socket
import time

from keras_ffl.config import Config, ConfigError

CONFIG = "config.json"
REPORT = "report.json"
WEIGHTS = "model.weights.h5"
LAST_CHECKPOINT = os.path.join("checkpoints", "last.weights.h5")
BACKUP = "backup"
HISTORY = "history.csv"
TENSORBOARD = "tensorboard"
LOCK = ".lock"

#: model_dirs this process holds the lock of: realpath -> [fd, depth].
_held = {}


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
    previous = relocated(Config.load(config_path), model_dir)
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


#: Temporary files of writes a kill interrupted: ``NAME.tmpPID.weights.h5`` (weights) and
#: ``NAME.tmp-PID`` (config.json, report.json, history.csv).
LEFTOVER = re.compile(r".+\.tmp\d+\.weights\.h5|.+\.tmp-\d+")


def remove_leftovers(model_dir):
    """Removes what interrupted writes left in ``model_dir``, backup/ and checkpoints/ (call it
    holding the lock: no live process writes there then).  Returns the paths removed."""
    removed = []
    for folder in (model_dir, path(model_dir, BACKUP), os.path.dirname(path(model_dir, LAST_CHECKPOINT))):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            full = os.path.join(folder, name)
            if LEFTOVER.fullmatch(name) and os.path.isfile(full):
                os.remove(full)
                removed.append(full)
    return removed


def process_alive(pid):
    """Whether process ``pid`` lives on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_dead_partials(folder, pattern):
    """Removes the entries of ``folder`` matching ``pattern`` (a regex whose group ``pid`` is the
    writing process) whose process is dead: what a killed download or export left."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in os.listdir(folder):
        match = re.fullmatch(pattern, name)
        if match and not process_alive(int(match["pid"])):
            full = os.path.join(folder, name)
            shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
            removed.append(full)
    return removed


def live_holder(model_dir):
    """What the lock file says of the live process training in ``model_dir`` (``{"pid": ...}``),
    or None when none does.  Creates nothing."""
    try:
        fd = os.open(path(model_dir, LOCK), os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return holder_of(model_dir) or {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def epochs_checkpointed(model_dir):
    """Epochs done by the newest resume checkpoint of an unfinished run (0 when none)."""
    folder = path(model_dir, BACKUP)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return max((int(m[1]) for n in names if (m := re.fullmatch(r"epoch-(\d+)\.weights\.h5", n))), default=0)


def relocated(config, model_dir):
    """``config`` (a run's saved one) as if written in ``model_dir``: where a run lives (its
    folder, spelled with a trailing slash, relative or moved) is not part of its configuration,
    and neither are the method's folders inside it (FFCL's pre-training stage)."""
    return dataclasses.replace(config, model_dir=model_dir,
                               options=config.options.relocated(config.model_dir, model_dir))


def trim_history(model_dir, epochs_done):
    """Keeps in history.csv the header and one whole row for each of the first ``epochs_done``
    epochs (those the resume checkpoint holds): rows of epochs trained again after a resume,
    and a row torn by a kill, go."""
    import csv
    import io

    from keras_ffl.files import atomic_write_text

    history = path(model_dir, HISTORY)
    if not os.path.exists(history):
        return
    with open(history, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, by_epoch = rows[0], {}
    for row in rows[1:]:
        try:
            epoch = int(row[0])
        except (ValueError, IndexError):
            continue
        if len(row) == len(header) and 0 <= epoch < epochs_done:
            by_epoch[epoch] = row  # a repeated epoch (an older run's fallback): its latest row
    kept = [by_epoch[e] for e in sorted(by_epoch)]
    if kept == rows[1:]:
        return
    text = io.StringIO()
    csv.writer(text).writerows([header, *kept])  # Keras's CSVLogger writes the excel dialect too
    atomic_write_text(history, text.getvalue())


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


def check_can_create(target, what):
    """ConfigError unless ``target`` (a folder, existing or not) can be created and written:
    its nearest existing ancestor is a folder this process can write in.  Creates nothing."""
    import tempfile

    ancestor = os.path.abspath(target)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"{what} {target} is not writable: {ancestor} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=ancestor)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{what} {target} is not writable: {e.strerror or e}") from None


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



def holder_of(model_dir):
    """What the lock file says of the process holding it (``{"pid": ..., "host": ...}``), or {}."""
    try:
        with open(path(model_dir, LOCK)) as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def locked(model_dir):
    """Holds ``model_dir``'s exclusive lock while a run lives in it; ConfigError (nothing
    touched) when another live process holds it.  Re-entrant within a process."""
    key = os.path.realpath(model_dir)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    os.makedirs(model_dir, exist_ok=True)
    fd = os.open(path(model_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        holder = holder_of(model_dir)
        who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
        raise ConfigError(f"{model_dir} is in use by a live run ({who}): wait for it to end, or use another "
                          "--model_dir") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def writes_here(config):
    """Whether this process is the one that writes the run's files, known from the flags and
    TF_CONFIG before any backend starts: the chief, worker 0 of ``--worker_hosts``, or the
    only process."""
    if config.strategy != "multi_worker":
        return True
    if config.worker_hosts:
        return config.task_index == 0
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = cluster.get("task", {})
    if task.get("type") == "chief":
        return True
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and "chief" not in cluster.get("cluster", {})
