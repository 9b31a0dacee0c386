"""OKDDip: Online Knowledge Distillation with Diverse Peers (Chen et al., AAAI 2020), as in the
official code (DefangChen/OKDDip ``train_GL.py``, ``models/model_cifar/resnet_GL.py``).

A shared trunk (ONE's split) and K branches: branches 0..K-2 are *auxiliary peers*, branch
K-1 the *group leader* (the deployed model).  Each peer i gets its own target, an attention-
weighted mix of the peers' logits:

    q_i = W_q h_i,  k_j = W_k h_j          (h: the branch's pooled features; W: d -> d/8, no bias)
    a_ij = softmax_j(q_i . k_j)            (over the peers, j = i included; no 1/sqrt(d) scaling)
    t_i  = sum_j a_ij z_j                  (in logit space)

    L = sum_peers CE(z_i) + CE(z_leader)
        + w(e) * [ sum_peers klO(z_i <- t_i) + klO(z_leader <- mean_peers z_i) ]       (T = 3)

``klO`` is the official code's ``KL_Loss``: the teacher side (softmax + 1e-7) is **not**
detached.  Gradients of the first level flow through the targets into the other peers, their
features and W_q / W_k, which learn only that way (with detached targets they would stay at
their initial values); the second level flows into the peers through their mean.

``leader=False`` is the official ``en=True`` variant: every branch is an attention peer.
Reported: each branch, their mean, the mean-logit ensemble of all branches, ``leader`` (the
deployed branch) and ``peer_ensemble`` (the mean of the peers' logits, the leader's teacher).
"""

import keras
from keras import layers, ops

from keras_ffl.initializers import linear_like, torch_default
from keras_ffl.losses import as_float, cross_entropy, distillation_kl
from keras_ffl.methods.base import OnlineDistiller
from keras_ffl.methods.okddip_options import OKDDipOptions

DEFAULTS = OKDDipOptions()


@keras.saving.register_keras_serializable(package="keras_ffl")
class PeerAttention(layers.Layer):
    """``W_q`` and ``W_k`` (d -> d/8, no bias, shared by the peers) and the attention weights
    ``a [B, peers, peers]`` they give.  ``kernel_initializer`` (default ``nn.Linear``'s) is drawn
    afresh for each of the two; OKDDip passes its network's linear rule, which the official init
    loop gives W_q / W_k (``nn.Linear``'s default with ResNet and DenseNet, N(0, 0.01) with VGG)."""

    def __init__(self, features, kernel_initializer=None, **kwargs):
        super().__init__(**kwargs)
        self.features = int(features)
        self.kernel_initializer = keras.initializers.serialize(keras.initializers.get(kernel_initializer
                                                                                      or torch_default()))
        projected = max(self.features // 8, 1)
        self.query = layers.Dense(projected, use_bias=False, kernel_initializer=self.fresh_initializer(),
                                  name="query")
        self.key = layers.Dense(projected, use_bias=False, kernel_initializer=self.fresh_initializer(), name="key")

    def fresh_initializer(self):
        return keras.initializers.deserialize(self.kernel_initializer)

    def call(self, pooled):
        """``pooled`` [B, peers, d] -> attention [B, peers, peers] (row i: peer i's weights)."""
        scores = ops.matmul(self.query(pooled), ops.transpose(self.key(pooled), (0, 2, 1)))
        return ops.softmax(scores, axis=-1)

    def get_config(self):
        return {**super().get_config(), "features": self.features, "kernel_initializer": self.kernel_initializer}


@keras.saving.register_keras_serializable(package="keras_ffl")
class OKDDip(OnlineDistiller):
    method_name = "okddip"

    @property
    def min_branches(self):
        return OKDDipOptions(leader=self.leader).min_branches()

    def __init__(self, branches, num_classes=None, trunk=None, leader=DEFAULTS.leader, **kwargs):
        self.leader = bool(leader)
        self.teacher_names = ("leader", "peer_ensemble") if self.leader else ("peer_ensemble",)
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        features = self.branches[0].outputs[1].shape[-1]
        kernel, _ = linear_like(self.branches[0], features, use_bias=False)
        self.attention = PeerAttention(features, kernel_initializer=kernel, name="attention")

    @property
    def num_peers(self):
        return len(self.branches) - (1 if self.leader else 0)

    def loss_term_names(self):
        k = range(len(self.branches))
        return [f"ce_net{i}" for i in k] + [f"kd_net{i}" for i in k]

    def build_teachers(self, outputs, training):
        peers = outputs["logits"][:self.num_peers]
        pooled = ops.stack([ops.mean(f, axis=(1, 2)) for f in outputs["features"][:self.num_peers]], axis=1)
        weights = as_float(self.attention(pooled))  # [B, peers, peers], float64 in a float64 run
        outputs["attention"] = weights
        outputs["peer_targets"] = ops.einsum("bij,bjc->bic", weights, ops.stack(peers, axis=1))
        teachers = {"peer_ensemble": ops.mean(ops.stack(peers, axis=0), axis=0)}
        if self.leader:
            teachers["leader"] = outputs["logits"][-1]
        return teachers

    def compute_losses(self, outputs, labels):
        logits, t = outputs["logits"], self.temperature
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        for i in range(self.num_peers):
            terms[f"kd_net{i}"] = distillation_kl(logits[i], outputs["peer_targets"][:, i], t, detach=False)
        if self.leader:
            terms[f"kd_net{len(logits) - 1}"] = distillation_kl(logits[-1], outputs["teachers"]["peer_ensemble"], t,
                                                                 detach=False)
        return terms

    def get_config(self):
        return {**super().get_config(), "leader": self.leader}
