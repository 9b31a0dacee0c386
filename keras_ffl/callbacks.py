"""Callbacks keras_ffl adds to Keras's own (BackupAndRestore, CSVLogger, TensorBoard...)."""

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


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves weights (and optimiser state) each epoch through a temporary file and a rename,
    so an interrupted save never replaces a good checkpoint with half of one."""

    def __init__(self, path):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        save_weights_atomically(self.model, self.path)


def save_weights_atomically(model, path):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path[: -len(".weights.h5")] + f".tmp{os.getpid()}.weights.h5"
    model.save_weights(tmp)
    os.replace(tmp, path)
