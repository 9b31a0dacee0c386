"""MCL-OKD: Multi-view Contrastive Learning for Online Knowledge Distillation (Yang et al.,
ICASSP 2021), as in the official code (winycg/MCL-OKD ``main_cifar_mcl_okd.py``, ``mcl/``).

K branches on a shared trunk (MCL-OKD's early split: ResNet-32 shares the stem and stage 1,
each branch has stages 2-3).  Each branch b embeds its pooled features (``Linear(d -> 128)``,
then L2 normalisation): v_b.  Each branch a keeps a memory bank M_a of one embedding per
training example (non-trainable, checkpointed, not part of any exported sub-network).  For
every ordered pair (a, b), a != b, and each example n with its contrast indices
idx[n] = [n, k negatives from other classes] (drawn by the data pipeline, CRD's "exact" mode):

    S_ab[n, j] = exp(<M_a[idx[n, j]], v_b[n]> / tau)              (memory rows detached)
    Z_ab       = mean(S_ab) * N                                    (over the batch, every step)
    P          = S_ab / Z_ab,  m = k,  Pn = 1 / N
    l_ab[n]    = -[ log(P[n,0] / (P[n,0] + m Pn + eps)) + sum_{j>=1} log(m Pn / (P[n,j] + m Pn + eps)) ]

    L = ce_weight * sum_b CE(z_b) + kd_weight * kl(z_{K-1} <- sg(mean_b z_b))
        + contrastive_weight * sum_{a != b} l_ab                  (1, 1, 0.025; T = 3)

Only the last branch is distilled from the ensemble (with the textbook KL, no +1e-7, as the
code's ``DistillKL``).  After the step, each memory row of the batch moves towards the
branch's embedding: ``M_a[i] <- normalise(nce_m * M_a[i] + (1 - nce_m) * v_a[i])``.

Inputs: ``{"images": [B, H, W, C], "index": [B], "contrast": [B, k + 1]}`` (the command line's
pipeline provides them; ``keras_ffl.data.stream.EpochBatches(..., negatives=k)``).  Without
``contrast`` (evaluation) the contrastive term is 0 and nothing is updated.
"""

import math

import keras
from keras import layers, ops

from keras_ffl import engines
from keras_ffl.losses import as_float, cross_entropy, distillation_kl
from keras_ffl.methods.base import OnlineDistiller
from keras_ffl.methods.mcl_okd_options import MCLOKDOptions

DEFAULTS = MCLOKDOptions()

NCE_EPS = 1e-7


@keras.saving.register_keras_serializable(package="keras_ffl")
class Embed(layers.Layer):
    """``Linear(d -> dim)`` (PyTorch's default init) then L2 normalisation (no epsilon)."""

    def __init__(self, features, dim=128, **kwargs):
        super().__init__(**kwargs)
        self.features, self.dim = int(features), int(dim)
        bound = 1.0 / math.sqrt(self.features)
        self.linear = layers.Dense(self.dim, kernel_initializer=keras.initializers.RandomUniform(-bound, bound),
                                   bias_initializer=keras.initializers.RandomUniform(-bound, bound), name="linear")

    def call(self, pooled):
        u = as_float(self.linear(pooled))
        return u / ops.sqrt(ops.sum(ops.square(u), axis=-1, keepdims=True))

    def get_config(self):
        return {**super().get_config(), "features": self.features, "dim": self.dim}


def contrastive_loss(memory_rows, embeddings, memory_size, tau, mean=ops.mean):
    """Per-example ``l_ab`` for memory rows ``[B, k+1, D]`` (already detached) and the other
    branch's embeddings ``[B, D]``; ``mean`` is the batch mean of the normaliser Z (global
    across replicas)."""
    scores = ops.exp(ops.einsum("bjd,bd->bj", memory_rows, embeddings) / tau)
    normaliser = ops.stop_gradient(mean(scores)) * float(memory_size)
    p = scores / normaliser
    negatives = p.shape[1] - 1
    noise = negatives / float(memory_size)
    positive = ops.log(p[:, 0] / (p[:, 0] + noise + NCE_EPS))
    negative = ops.sum(ops.log(noise / (p[:, 1:] + noise + NCE_EPS)), axis=1)
    return -(positive + negative)


def memory_update(memory, indices, embeddings, momentum):
    """The bank after moving rows ``indices`` towards ``embeddings`` and renormalising."""
    rows = ops.take(memory, indices, axis=0) * momentum + embeddings * (1.0 - momentum)
    rows = rows / ops.sqrt(ops.sum(ops.square(rows), axis=-1, keepdims=True))
    return ops.scatter_update(memory, ops.expand_dims(indices, -1), rows)


@keras.saving.register_keras_serializable(package="keras_ffl")
class MCLOKD(OnlineDistiller):
    method_name = "mcl_okd"

    def __init__(self, branches, num_classes=None, trunk=None, memory_size=None, embed_dim=DEFAULTS.embed_dim,
                 nce_k=DEFAULTS.nce_k, nce_t=DEFAULTS.nce_t, nce_m=DEFAULTS.nce_m, ce_weight=DEFAULTS.ce_weight,
                 kd_weight=DEFAULTS.kd_weight, contrastive_weight=DEFAULTS.contrastive_weight, **kwargs):
        if not memory_size:
            raise ValueError("MCL-OKD needs memory_size, the number of training examples (one memory row each)")
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        self.memory_size, self.embed_dim, self.nce_k = int(memory_size), int(embed_dim), int(nce_k)
        self.nce_t, self.nce_m = float(nce_t), float(nce_m)
        self.ce_weight, self.kd_weight, self.contrastive_weight = float(ce_weight), float(kd_weight), \
            float(contrastive_weight)
        count = len(self.branches)
        self.embeds = [Embed(b.outputs[1].shape[-1], self.embed_dim, name=f"embed{k}")
                       for k, b in enumerate(self.branches)]
        bound = 1.0 / math.sqrt(self.embed_dim / 3.0)
        self.memories = [
            self.add_weight(shape=(self.memory_size, self.embed_dim), trainable=False, name=f"memory{k}",
                            initializer=keras.initializers.RandomUniform(-bound, bound),
                            aggregation="only_first_replica")
            for k in range(count)
        ]
        self.term_weights = {**{f"ce_net{k}": self.ce_weight for k in range(count)},
                             f"kd_net{count - 1}": self.kd_weight, "con": self.contrastive_weight}

    def example_inputs(self, batch_size):
        import numpy as np

        return {"images": self.example_images(batch_size), "index": np.zeros((batch_size,), "int64"),
                "contrast": np.zeros((batch_size, 2), "int64")}

    def loss_term_names(self):
        return [f"ce_net{k}" for k in range(len(self.branches))] + [f"kd_net{len(self.branches) - 1}", "con"]

    def build_teachers(self, outputs, training):
        outputs["embeddings"] = [embed(ops.mean(f, axis=(1, 2))) for embed, f in
                                 zip(self.embeds, outputs["features"])]
        return {}

    def compute_losses(self, outputs, labels):
        logits = outputs["logits"]
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        ensemble = ops.stop_gradient(outputs["ensemble"])
        terms[f"kd_net{len(logits) - 1}"] = distillation_kl(logits[-1], ensemble, self.temperature, eps=0.0)
        contrast = outputs["extras"].get("contrast")
        if contrast is None:
            terms["con"] = ops.zeros_like(terms["ce_net0"])
            return terms
        embeddings = outputs["embeddings"]
        flat = ops.reshape(ops.cast(contrast, "int32"), (-1,))
        per_pair = []
        for a, memory in enumerate(self.memories):
            rows = ops.stop_gradient(ops.reshape(ops.take(memory, flat, axis=0), (-1, contrast.shape[1],
                                                                                  self.embed_dim)))
            for b, v in enumerate(embeddings):
                if a != b:
                    per_pair.append(contrastive_loss(rows, v, self.memory_size, self.nce_t,
                                                     mean=engines.current().global_mean))
        terms["con"] = sum(per_pair[1:], per_pair[0])
        return terms

    def after_step(self, outputs):
        """Moves the memory rows of the batch towards the branches' embeddings (after every
        replica's rows have been gathered, so every copy of the bank gets the same update)."""
        index = outputs["extras"].get("index")
        if index is None or outputs["extras"].get("contrast") is None:
            return
        engine = engines.current()
        indices = ops.cast(engine.all_gather(ops.reshape(index, (-1,))), "int32")
        for memory, v in zip(self.memories, outputs["embeddings"]):
            embeddings = engine.all_gather(ops.stop_gradient(v))
            memory.assign(memory_update(memory, indices, embeddings, self.nce_m))

    def get_config(self):
        return {**super().get_config(), "memory_size": self.memory_size, "embed_dim": self.embed_dim,
                "nce_k": self.nce_k, "nce_t": self.nce_t, "nce_m": self.nce_m, "ce_weight": self.ce_weight,
                "kd_weight": self.kd_weight, "contrastive_weight": self.contrastive_weight}
