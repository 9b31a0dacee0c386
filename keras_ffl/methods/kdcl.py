"""KDCL: Online Knowledge Distillation via Collaborative Learning (Guo et al., CVPR 2020).

K independent networks of any architectures, each fed its *own* random augmentation of the
same image (inputs ``{"images", "views": [B, K, H, W, C]}``: view k goes to network k; without
views every network sees the images).  A teacher is built from their logits, detached, and
every network learns from it:

    L_k = ce_weight * CE(z_k) + kd_weight * kl(z_k <- z_t)

Teachers (``teacher=``):

* ``minlogit`` (default): ``z_t[c] = min_k (z_k[c] - z_k[y])``, per example (so ``z_t[y] = 0``);
* ``naive``: the logits of the network with the lowest cross-entropy, per example
  (``naive_per="batch"``: the network with the lowest mean cross-entropy on the batch);
* ``linear``: ``z_t = sum_k w_k z_k`` with ``w`` on the simplex minimising the batch's
  cross-entropy of ``z_t``, solved per mini-batch (``linear_weights``: an exact line search
  for two networks, exact pairwise moves for more);
* ``general``: ``z_t = sum_k w_k z_k`` with the generalisation-optimal weights of Perrone and
  Cooper, ``w = C^-1 1 / (1^T C^-1 1)``, ``C_ij = E[(p_i - y)^T (p_j - y)]`` over held-out
  examples; ``update_general_weights(images, labels)`` sets them (the command line does so at
  the start of every epoch on ``--kdcl_holdout`` training images kept out of training), uniform
  until then.

The teacher needs the labels (MinLogit and Naive use them per example), so it is not a
reported part: the report has each network, their mean and their mean-logit ensemble.

No official code exists.  Assumptions, stated here and in BUILD.md: the per-example Naive and
MinLogit teachers; the simplex constraint, solver and per-batch refresh of Linear; General's
held-out split (size ``--kdcl_holdout``) and per-epoch refresh, with a small ridge (1e-6 of
C's trace) before inverting; T = 2 and equal CE/KD weights of 1 (the paper's values could not
be checked; shaoeric's unofficial code uses a mean-logit teacher, T = 4 and 0.5/0.5).
"""

import keras
import numpy as np
from keras import ops

from keras_ffl.losses import cross_entropy, distillation_kl
from keras_ffl.methods.base import OnlineDistiller
from keras_ffl.methods.kdcl_options import TEACHERS, KDCLOptions

DEFAULTS = KDCLOptions()


def minlogit_teacher(logits, labels):
    """``z_t[c] = min_k (z_k[c] - z_k[y])``: every network's logits shifted so that the true
    class scores 0, then the element-wise minimum."""
    labels = ops.reshape(ops.cast(labels, "int32"), (-1, 1))
    shifted = [z - ops.take_along_axis(z, labels, axis=-1) for z in logits]
    return ops.min(ops.stack(shifted, axis=0), axis=0)


def naive_teacher(logits, labels, per="example"):
    losses = ops.stack([cross_entropy(z, labels) for z in logits], axis=1)  # [B, K]
    if per == "batch":
        best = ops.argmin(ops.mean(losses, axis=0))
        return ops.take(ops.stack(logits, axis=0), best, axis=0)
    chosen = ops.one_hot(ops.argmin(losses, axis=1), len(logits), dtype=logits[0].dtype)  # [B, K]
    return ops.einsum("bk,kbc->bc", chosen, ops.stack(logits, axis=0))


#: Linear teacher solver: safeguarded Newton steps of each exact line search (quadratic
#: convergence inside a bracket that halves whenever Newton would leave it), and pairwise
#: moves for K > 2 networks (each one an exact line search; K = 2 needs one).
LINE_SEARCH_STEPS = 16
PAIRWISE_MOVES_PER_NETWORK = 10


def linear_weights(logits, labels, moves=None):
    """The simplex weights ``w`` minimising the batch's cross-entropy of ``sum_k w_k z_k``.

    The objective is convex in ``w``.  Each move takes mass from the network with the largest
    gradient that still has weight to the one with the smallest, by the exact minimiser along
    that edge, so a solution on the boundary (``w_k = 0``) is reached exactly.  For two
    networks this is one exact 1-D minimisation over ``[0, 1]``; for K > 2 the moves are
    pairwise (SMO-like) coordinate descent, ``PAIRWISE_MOVES_PER_NETWORK * K`` of them.
    ``tests/test_comparison_methods.py`` holds the result to a brute-force grid.
    """
    stacked = ops.stack(logits, axis=0)  # [K, B, C]
    count = len(logits)
    dtype = stacked.dtype
    onehot = ops.one_hot(ops.reshape(ops.cast(labels, "int32"), (-1,)), ops.shape(stacked)[-1], dtype=dtype)
    batch = ops.cast(ops.shape(stacked)[1], dtype)
    zero = ops.zeros((), dtype)

    def probabilities(weights):
        return ops.softmax(ops.einsum("k,kbc->bc", weights, stacked), axis=-1)

    def move(_, weights):
        # d CE / d w_k = mean_b sum_c (p - y) z_k
        g = ops.einsum("bc,kbc->k", probabilities(weights) - onehot, stacked) / batch
        to = ops.cast(ops.argmin(g), "int32")
        # Only networks with weight left can give; ``to`` never gives to itself.
        can_give = ops.logical_and(weights > 0, ops.arange(count, dtype="int32") != to)
        giver = ops.argmax(ops.where(can_give, g, ops.full_like(g, -float("inf"))))
        direction = ops.one_hot(to, count, dtype=dtype) - ops.one_hot(giver, count, dtype=dtype)
        room = ops.where(ops.any(can_give), ops.take(weights, giver), zero)
        shift = ops.einsum("k,kbc->bc", direction, stacked)  # d z / d t along the edge

        def slope_and_curvature(t):
            p = probabilities(weights + t * direction)
            mean_shift = ops.sum(p * shift, axis=-1)
            slope = ops.sum((p - onehot) * shift) / batch
            curvature = ops.sum(ops.sum(p * ops.square(shift), axis=-1) - ops.square(mean_shift)) / batch
            return slope, curvature

        def newton(_, state):
            low, high, t = state
            slope, curvature = slope_and_curvature(t)
            rising = slope > 0
            low, high = ops.where(rising, low, t), ops.where(rising, t, high)
            proposal = t - slope / ops.maximum(curvature, 1e-30)
            inside = ops.logical_and(proposal > low, proposal < high)
            return low, high, ops.where(inside, proposal, 0.5 * (low + high))

        _, _, step = ops.fori_loop(0, LINE_SEARCH_STEPS, newton, (zero, room, 0.5 * room))
        # The whole room when the slope still falls at its end (an optimum on the boundary).
        step = ops.where(slope_and_curvature(room)[0] <= 0, room, step)
        moved = ops.maximum(weights + step * direction, 0)
        return moved / ops.sum(moved)

    weights = ops.ones((count,), dtype=dtype) / float(count)
    if moves is None:
        moves = 1 if count == 2 else PAIRWISE_MOVES_PER_NETWORK * count
    return ops.fori_loop(0, moves, move, weights)


def general_weights(probabilities, onehot, ridge=1e-6):
    """Perrone-Cooper weights from held-out predictions: ``probabilities`` [K, N, C]."""
    errors = np.asarray(probabilities, np.float64) - np.asarray(onehot, np.float64)[None]
    covariance = np.einsum("inc,jnc->ij", errors, errors) / errors.shape[1]
    covariance += ridge * np.trace(covariance) / len(covariance) * np.eye(len(covariance))
    inverse = np.linalg.inv(covariance)
    return inverse.sum(axis=1) / inverse.sum()


@keras.saving.register_keras_serializable(package="keras_ffl")
class KDCL(OnlineDistiller):
    method_name = "kdcl"

    def __init__(self, branches, num_classes=None, trunk=None, teacher=DEFAULTS.teacher, naive_per="example",
                 ce_weight=DEFAULTS.ce_weight, kd_weight=DEFAULTS.kd_weight, **kwargs):
        if teacher not in TEACHERS:
            raise ValueError(f"KDCL teacher must be one of {TEACHERS}, got '{teacher}'")
        if naive_per not in ("example", "batch"):
            raise ValueError(f"KDCL naive_per must be 'example' or 'batch', got '{naive_per}'")
        self.teacher, self.naive_per = teacher, naive_per
        self.ce_weight, self.kd_weight = float(ce_weight), float(kd_weight)
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        count = len(self.branches)
        self.general = self.add_weight(shape=(count,), initializer=keras.initializers.Constant(1.0 / count),
                                       trainable=False, name="general_weights")
        self.term_weights = {**{f"ce_net{k}": self.ce_weight for k in range(count)},
                             **{f"kd_net{k}": self.kd_weight for k in range(count)}}

    def branch_inputs(self, images, extras, training):
        views = extras.get("views")
        if views is None:
            return images, [images] * len(self.branches)
        return images, [views[:, k] for k in range(len(self.branches))]

    def loss_term_names(self):
        k = range(len(self.branches))
        return [f"ce_net{i}" for i in k] + [f"kd_net{i}" for i in k]

    def teacher_logits(self, logits, labels):
        """The teacher of the method's kind, from (detached) logits; needs the labels."""
        logits = [ops.stop_gradient(z) for z in logits]
        if self.teacher == "minlogit":
            return minlogit_teacher(logits, labels)
        if self.teacher == "naive":
            return naive_teacher(logits, labels, self.naive_per)
        weights = linear_weights(logits, labels) if self.teacher == "linear" else self.general
        return ops.einsum("k,kbc->bc", ops.cast(weights, logits[0].dtype), ops.stack(logits, axis=0))

    def compute_losses(self, outputs, labels):
        logits = outputs["logits"]
        teacher = self.teacher_logits(logits, labels)
        outputs["kdcl_teacher"] = teacher
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        terms.update({f"kd_net{k}": distillation_kl(z, teacher, self.temperature, eps=0.0) for k, z in enumerate(logits)})
        return terms

    def update_general_weights(self, images, labels, batch_size=256):
        """Sets General's weights from held-out ``images`` (standardised) and ``labels``."""
        probabilities = [[] for _ in self.branches]
        for start in range(0, len(labels), batch_size):
            outputs = self(images[start:start + batch_size], training=False)
            for k in range(len(self.branches)):
                probabilities[k].append(np.asarray(ops.softmax(outputs[f"net{k}"], axis=-1)))
        probabilities = np.stack([np.concatenate(p) for p in probabilities])
        onehot = np.eye(self.num_classes)[np.asarray(labels, np.int64)]
        self.general.assign(general_weights(probabilities, onehot).astype(self.general.dtype))
        return np.asarray(self.general)

    def get_config(self):
        return {**super().get_config(), "teacher": self.teacher, "naive_per": self.naive_per,
                "ce_weight": self.ce_weight, "kd_weight": self.kd_weight}


class GeneralWeights(keras.callbacks.Callback):
    """Sets General's weights from held-out images at each epoch's start (the command line's
    ``--kdcl_holdout``; from Python, pass it to ``fit`` with your own held-out images)."""

    def __init__(self, images, labels):
        super().__init__()
        self.images, self.labels = images, labels

    def on_epoch_begin(self, epoch, logs=None):
        self.model.update_general_weights(self.images, self.labels)
