"""DML: Deep Mutual Learning (Zhang et al., CVPR 2018).

K independent networks of any architectures; each learns from the labels and from the
average of its peers:

    L_k = CE(z_k) + 1/(K-1) * sum_{j != k} kl(z_k <- z_j)

The KL carries T^2, so at the paper's T = 1 it is the paper's loss exactly; the AFD paper
compares against DML at T = 3 with T^2 (``temperature=3``).

Update order: ``synchronous`` (default, the common re-implementation) updates every network
from one forward pass with detached targets.  ``sequential`` is the paper's: network 1 is
updated, predictions are recomputed, then network 2, and so on; the optimiser counts one
step per mini-batch, so its schedule is the synchronous one.
"""

import keras

from keras_ffl.losses import cross_entropy, mean_peer_kl
from keras_ffl.methods.base import Gradient, OnlineDistiller, Update
from keras_ffl.methods.dml_options import UPDATE_ORDERS, DMLOptions

DEFAULTS = DMLOptions()


@keras.saving.register_keras_serializable(package="keras_ffl")
class DML(OnlineDistiller):
    method_name = "dml"

    def __init__(self, branches, num_classes=None, trunk=None, update=DEFAULTS.update, **kwargs):
        if update not in UPDATE_ORDERS:
            raise ValueError(f"DML update must be one of {UPDATE_ORDERS}, got '{update}'")
        self.update = update
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)

    def loss_term_names(self):
        k = range(len(self.branches))
        return [f"ce_net{i}" for i in k] + [f"kd_net{i}" for i in k]

    def compute_losses(self, outputs, labels):
        logits = outputs["logits"]
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        terms.update({f"kd_net{k}": mean_peer_kl(logits, k, self.temperature) for k in range(len(logits))})
        return terms

    def update_plan(self):
        if self.update == "synchronous":
            return super().update_plan()
        # One phase per network, each after a fresh forward pass through the updated peers.
        return [
            [Update("optimizer", (Gradient((f"ce_net{k}", f"kd_net{k}"), branch.trainable_variables,
                                           ((self.weight_decay, branch.trainable_variables),)),))]
            for k, branch in enumerate(self.branches)
        ]

    def get_config(self):
        return {**super().get_config(), "update": self.update}
