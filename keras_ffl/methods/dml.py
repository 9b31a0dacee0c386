"""DML: Deep Mutual Learning (Zhang et al., CVPR 2018).

K independent networks of any architectures; each learns from the labels and from the
average of its peers:

    L_k = CE(z_k) + 1/(K-1) * sum_{j != k} kl(z_k <- z_j)

The KL carries T^2, so at the paper's T = 1 it is the paper's loss exactly; the AFD paper
compares against DML at T = 3 with T^2 (``--temperature=3``).

Update order: ``synchronous`` (default, the common re-implementation) updates every network
from one forward pass with detached targets.  ``sequential`` is the paper's: network 1 is
updated, predictions are recomputed, then network 2, and so on.
"""

import tensorflow as tf

from keras_ffl.losses import cross_entropy, mean_peer_kl
from keras_ffl.methods.base import OnlineDistiller

UPDATE_ORDERS = ("synchronous", "sequential")


class DML(OnlineDistiller):
    independent_only = True

    def __init__(self, branches, num_classes, trunk=None, update="synchronous", **kwargs):
        if update not in UPDATE_ORDERS:
            raise ValueError(f"DML update must be one of {UPDATE_ORDERS}, got '{update}'")
        self.update = update
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)

    def loss_term_names(self):
        k = range(len(self.branches))
        return [f"ce_net{i}" for i in k] + [f"kd_net{i}" for i in k]

    def peer_kl(self, logits, k):
        return mean_peer_kl(logits, k, self.temperature)

    def compute_losses(self, outputs, labels):
        logits = outputs["logits"]
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        terms.update({f"kd_net{k}": self.peer_kl(logits, k) for k in range(len(logits))})
        return terms

    def train_step(self, data):
        if self.update == "synchronous":
            return super().train_step(data)
        images, labels = data[0], data[1]
        for k, branch in enumerate(self.branches):
            variables = branch.trainable_variables
            with tf.GradientTape() as tape:
                outputs = self.forward(images, training=True)
                own_terms = {
                    f"ce_net{k}": cross_entropy(outputs["logits"][k], labels),
                    f"kd_net{k}": self.peer_kl(outputs["logits"], k),
                }
                loss = self.weighted_sum(own_terms) + self.l2_penalty([(self.weight_decay, variables)])
                loss = self.optimizer.scale_loss(loss)
            self.apply_scaled_loss(tape, loss, self.optimizer, variables)
        # One optimiser step per mini-batch for the schedule, however many networks were updated.
        self.optimizer.iterations.assign_sub(len(self.branches) - 1)
        # Metrics of the last forward pass (every network but the last already updated).
        return self.update_metrics(outputs, labels, self.compute_losses(outputs, labels))

    def get_config(self):
        return {**super().get_config(), "update": self.update}


def dml_options(config):
    return dict(update=config.dml_update)
