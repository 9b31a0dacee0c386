"""Callbacks keras_ffl adds to Keras's own (BackupAndRestore, CSVLogger, TensorBoard...)."""

import math
import os
import re
import sys
import tempfile
import time

import keras

from keras_ffl import keras_private
from keras_ffl.errors import ResumeError, WriteError


class EpochVariable(keras.callbacks.Callback):
    """Tells the model which epoch it is in, for the ramp-up of the distillation terms."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.epoch.assign(float(epoch))


def headline(logs):
    """What a progress line shows: the total loss and each part's top-1 accuracy (and the same
    on the test split).  Every loss term stays in history.csv and TensorBoard."""
    return {k: v for k, v in (logs or {}).items()
            if k.removeprefix("val_") == "loss" or k.removeprefix("val_").startswith("acc_")}


def epoch_line(epoch, epochs, seconds, logs, part_names=None):
    """``epoch 2/6: 14 s, 742 img/s; train loss 2.1130, top-1 % net0 73.9 ...; test loss ...``."""
    logs = logs or {}
    rate = logs.get("img_per_sec")
    line = f"epoch {epoch + 1}/{epochs}: {seconds:.0f} s" + (f", {rate:.0f} img/s" if rate else "")
    for split, prefix in (("train", ""), ("test", "val_")):
        if f"{prefix}loss" in logs:
            names = part_names or sorted(k[len(prefix) + 4:] for k in logs if k.startswith(f"{prefix}acc_"))
            parts = " ".join(f"{name} {100 * float(logs[f'{prefix}acc_{name}']):.1f}" for name in names
                             if f"{prefix}acc_{name}" in logs)
            line += f"; {split} loss {float(logs[prefix + 'loss']):.4f}, top-1 % {parts}"
    return line


class ConciseProgbar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar with the headline numbers only (with every loss term a step's line
    carried 24 numbers and wrapped five times in a 120-column terminal); where the output is
    not a terminal (a log file, a pipe), one plain line per epoch instead: Keras redraws its
    bar on every step even there, and a 6-epoch run's log was 270 KB of carriage returns and
    ANSI codes."""

    def __init__(self, terminal=None):
        super().__init__()
        self.terminal = sys.stdout.isatty() if terminal is None else terminal

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()
        if self.terminal:
            super().on_epoch_begin(epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if self.terminal:
            super().on_train_batch_end(batch, headline(logs))

    def on_epoch_end(self, epoch, logs=None):
        if self.terminal:
            super().on_epoch_end(epoch, headline(logs))
        elif self.verbose:
            print(epoch_line(epoch, self.epochs, time.perf_counter() - self.started, logs,
                             getattr(self.model, "part_names", None)), flush=True)


def progress_callbacks(verbose, terminal):
    """``(callbacks, fit's verbose)`` for ``--verbose``: 1 a concise progress bar on a terminal
    and one line per epoch elsewhere, 2 one line per epoch, 0 nothing."""
    if verbose == 0:
        return [], 0
    return [ConciseProgbar(terminal=terminal and verbose == 1)], 1


class Throughput(keras.callbacks.Callback):
    """Adds ``img_per_sec`` (training images per second, after warm-up) to the epoch logs.

    The first ``warmup_steps`` batches of the run (tracing, autotuning) are not timed.
    Place it before CSVLogger/TensorBoard so they record the figure.
    """

    def __init__(self, batch_size, warmup_steps=5):
        super().__init__()
        self.batch_size, self.warmup_steps = batch_size, warmup_steps
        self.steps_seen = 0
        self.history = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.timed_steps = None, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps_seen += 1
        if self.steps_seen == self.warmup_steps or (self.start is None and self.steps_seen > self.warmup_steps):
            self.start = time.perf_counter()
        elif self.start is not None:
            self.timed_steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.start is not None and self.timed_steps:
            rate = self.timed_steps * self.batch_size / (time.perf_counter() - self.start)
            self.history.append(rate)
            if logs is not None:
                logs["img_per_sec"] = rate

    @property
    def best(self):
        """Median over epochs: robust to a noisy neighbour on a shared machine."""
        if not self.history:
            return None
        ordered = sorted(self.history)
        return ordered[len(ordered) // 2]


def diverged(logs, model=None):
    """True when an epoch's training loss is NaN or infinite, or (given ``model``) any of its
    weights or optimiser variables is.  Keras still calls ``on_epoch_end`` after TerminateOnNaN
    stops an epoch; saving then would replace the last good checkpoint with the diverged
    weights.  The loss alone is not enough: an epoch's loss is computed before its last
    update, which can blow the weights up."""
    loss = (logs or {}).get("loss")
    if loss is not None and not math.isfinite(float(loss)):
        return True
    return model is not None and not state_is_finite(model)


def state_is_finite(model):
    """Whether every optimiser variable of ``model`` is finite and every weight's squares sum
    to a finite number in its own dtype.  A blown-up step can leave weights that are finite but
    past the square root of the dtype's range (1e36 in float32): the next forward pass
    (BatchNorm's variance, the L2 term) overflows, so they are no better than inf."""
    import numpy as np

    optimizers = getattr(model, "optimizers", None) or ([model.optimizer] if model.optimizer is not None else [])
    optimizer_variables = [v for optimizer in optimizers for v in optimizer.variables]
    with np.errstate(over="ignore", invalid="ignore"):
        for variables, squared in ((model.weights, True), (optimizer_variables, False)):
            for variable in variables:
                value = keras.ops.convert_to_numpy(variable)
                if not np.issubdtype(value.dtype, np.floating):
                    continue
                if not np.isfinite(np.sum(np.square(value)) if squared else value).all():
                    return False
    return True


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves weights (and optimiser state) each epoch through a temporary file and a rename,
    so an interrupted save never replaces a good checkpoint with half of one, and never
    after a diverged epoch."""

    def __init__(self, path, write=True, join=False):
        super().__init__()
        self.path, self.write, self.join = path, write, join

    def on_epoch_end(self, epoch, logs=None):
        if not diverged(logs, self.model):
            save_weights_in_step(self.model, self.path, self.write, self.join)


class ResumeCheckpoint(keras.callbacks.BackupAndRestore):
    """Keras's resume callback (``BackupAndRestore``), made safe against ``kill -9``, torn
    files and divergence:

    * each epoch's state (weights and optimiser state) is written under a temporary name and
      renamed to ``epoch-N.weights.h5`` (N = epochs done), so a file under its final name is
      always whole, and the epoch number travels with the weights (Keras keeps it in a
      separate JSON file, which a kill between the two writes leaves stale);
    * the two newest files are kept; ``restore(model)`` loads the newest one that loads,
      *before* the data stream is built, so the stream starts at the epoch the weights are at;
    * nothing is written after a diverged epoch (a NaN/inf loss, weight or optimiser variable:
      training then stops), and the files are kept when
      training ends that way, so rerunning resumes from the last good epoch;
    * only the chief writes (``write=False`` on the other workers; all of them read, so a
      resumed cluster needs ``model_dir`` on storage every worker sees); ``join=True`` makes
      a worker that does not write still run each save (see ``save_weights_in_step``).
    """

    NAME = re.compile(r"epoch-(\d+)\.weights\.h5$")

    def __init__(self, backup_dir, write=True, keep=2, join=False, delete_checkpoint=True):
        super().__init__(backup_dir, delete_checkpoint=delete_checkpoint)
        self.write, self.keep, self.join = write, keep, join
        self.diverged = False
        self.diverged_epoch = None
        self.restored = False

    def checkpoints(self):
        """``[(epochs done, path)]``, newest first."""
        if not os.path.isdir(self.backup_dir):
            return []
        found = [(int(m[1]), os.path.join(self.backup_dir, n)) for n in os.listdir(self.backup_dir)
                 if (m := self.NAME.fullmatch(n))]
        return sorted(found, reverse=True)

    def restore(self, model):
        """Loads the newest checkpoint that loads into ``model`` (weights and optimiser state),
        falling back to the one before, and tells ``fit`` to start after it.  Returns the
        number of finished epochs (0 for a fresh run)."""
        self.restored = True
        found = self.checkpoints()
        if found and model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        for epoch, path in found:
            try:
                model.load_weights(path)  # a failed load is overwritten whole by the next one tried
            except Exception as e:  # noqa: BLE001 - h5py and Keras raise several types
                detail = str(e).splitlines()[0] if str(e) else type(e).__name__
                print(f"warning: resume checkpoint {path} cannot be read ({detail}); trying the previous one",
                      file=sys.stderr, flush=True)
                continue
            keras_private.set_initial_epoch(model, epoch)
            return epoch
        if found:  # starting over would overwrite them: the user decides
            raise ResumeError(f"no resume checkpoint in {self.backup_dir} can be read; move that folder away to "
                              "start the run over")
        return 0

    def on_train_begin(self, logs=None):
        if not self.restored:  # used on its own, outside keras_ffl.train
            self.restore(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if not self.diverged and diverged(logs, self.model):
            self.diverged, self.diverged_epoch = True, epoch
            self.model.stop_training = True  # TerminateOnNaN reads only the loss
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        if self.diverged:
            return
        path = os.path.join(self.backup_dir, f"epoch-{keras_private.backup_epoch(self)}.weights.h5")
        save_weights_in_step(self.model, path, self.write, self.join)
        if self.write:
            for _, old in self.checkpoints()[self.keep:]:
                os.remove(old)

    def on_train_end(self, logs=None):
        if self.write and not self.diverged:  # a finished run needs no resume point
            super().on_train_end(logs)

    def delete(self):
        """Removes the resume checkpoints: what keras_ffl.train does once the run's final weights
        and report are written (it builds this callback with ``delete_checkpoint=False``: until
        then they are the only record of the trained epochs)."""
        if self.write and os.path.isdir(self.backup_dir):
            import shutil

            shutil.rmtree(self.backup_dir)


def save_weights_atomically(model, path):
    """Writes through a temporary file and a rename: ``path`` is either the old file or the
    whole new one.  A failed write (full disk...) removes the temporary file and raises
    WriteError naming the file, the old one left in place."""
    tmp = path[: -len(".weights.h5")] + f".tmp{os.getpid()}.weights.h5"
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        model.save_weights(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise WriteError(f"cannot write {path}: {os_error_text(e)}; the previous file there is intact") from None


def os_error_text(e):
    """One line for an OSError: its errno's own text where it has one (h5py's strerror spans
    lines and names the temporary file), else its first line."""
    if e.errno:
        return os.strerror(e.errno)
    return (str(e).splitlines() or [type(e).__name__])[0]


def save_weights_in_step(model, path, write=True, join=False):
    """Saves the weights to ``path`` on the process that writes (``write``).  ``join``: a process
    that does not write still runs the save, into a scratch file it deletes.  On JAX across
    several processes, saving creates variables (Keras's saving builds a reference optimiser
    once) and creating a variable is a collective every process must enter, so the processes
    that do not write save in step with the one that does."""
    if write:
        save_weights_atomically(model, path)
    elif join:
        with tempfile.TemporaryDirectory(prefix="keras_ffl_unkept_") as scratch:
            model.save_weights(os.path.join(scratch, os.path.basename(path)))
