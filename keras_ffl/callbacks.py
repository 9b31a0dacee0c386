"""Callbacks keras_ffl adds to Keras's own (BackupAndRestore, CSVLogger, TensorBoard...)."""

import math
import os
import time

import keras


class EpochVariable(keras.callbacks.Callback):
    """Tells the model which epoch it is in, for the ramp-up of the distillation terms."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.epoch.assign(float(epoch))


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


def diverged(logs):
    """True when an epoch's training loss is NaN or infinite.  Keras still calls
    ``on_epoch_end`` after TerminateOnNaN stops an epoch; saving then would replace the last
    good checkpoint with the diverged weights."""
    loss = (logs or {}).get("loss")
    return loss is not None and not math.isfinite(float(loss))


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves weights (and optimiser state) each epoch through a temporary file and a rename,
    so an interrupted save never replaces a good checkpoint with half of one, and never
    after a diverged epoch."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        if not diverged(logs):
            save_weights_atomically(self.model, self.path)


class GuardedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras's resume checkpoint, not written after a diverged epoch, so rerunning a run that
    hit NaN resumes from the last good epoch rather than from NaN weights.  It keeps the
    previous checkpoint too (``double_checkpoint``): Keras falls back to it when the latest
    one cannot be read."""

    def __init__(self, backup_dir):
        super().__init__(backup_dir, double_checkpoint=True)
        self.diverged = False

    def on_epoch_end(self, epoch, logs=None):
        self.diverged = self.diverged or diverged(logs)
        if not self.diverged:
            super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        if not self.diverged:  # Keras deletes the checkpoint when fit returns; keep it to resume from
            super().on_train_end(logs)


def save_weights_atomically(model, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path[: -len(".weights.h5")] + f".tmp{os.getpid()}.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)
