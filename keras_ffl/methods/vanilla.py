"""Vanilla baseline: every network trained alone with cross-entropy (the first column of
every table), on the same data, schedule and report as the distillation methods."""

import keras

from keras_ffl.losses import cross_entropy
from keras_ffl.methods.base import OnlineDistiller


@keras.saving.register_keras_serializable(package="keras_ffl")
class Vanilla(OnlineDistiller):
    method_name = "vanilla"

    def loss_term_names(self):
        return [f"ce_net{k}" for k in range(len(self.branches))]

    def compute_losses(self, outputs, labels):
        return {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(outputs["logits"])}
