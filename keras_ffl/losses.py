"""Pure loss functions shared by every method.

Each returns *per-example* values (shape ``[batch]``); the method base class turns
them into a replica-aware mean.  ``tests/test_losses.py`` checks them against numpy.
"""

import math

import tensorflow as tf

# Added to the teacher's probabilities before the log, as in the FFL and ONE code.
# The distribution is deliberately not renormalised afterwards.
TEACHER_EPS = 1e-7


def cross_entropy(logits, labels):
    """Softmax cross-entropy against integer labels, per example."""
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.cast(logits, tf.float32)
    )


def distillation_kl(student_logits, teacher_logits, temperature, scale_by_t2=True):
    """KL(teacher || student) on temperature-softened distributions, per example.

    The teacher side is detached, as in the authors' code:

        t  = stop_gradient(softmax(z_t / T) + 1e-7)
        kl = T^2 * sum_c t * (log t - log_softmax(z_s / T))

    ``keras.losses.KLDivergence`` clips both sides and is not the same function.
    """
    temperature = float(temperature)
    student = tf.cast(student_logits, tf.float32) / temperature
    teacher = tf.cast(teacher_logits, tf.float32) / temperature
    t = tf.stop_gradient(tf.nn.softmax(teacher, axis=-1) + TEACHER_EPS)
    kl = tf.reduce_sum(t * (tf.math.log(t) - tf.nn.log_softmax(student, axis=-1)), axis=-1)
    if scale_by_t2:
        kl = kl * (temperature**2)
    return kl


def mean_peer_kl(logits, k, temperature):
    """``1/(K-1) * sum_{j != k} kl(z_k <- z_j)``: network k learning from each of its peers
    (DML's term, FFCL's response knowledge), per example."""
    peers = [distillation_kl(logits[k], z, temperature) for j, z in enumerate(logits) if j != k]
    return tf.add_n(peers) / float(len(peers))


def rampup_weight(epoch, rampup_epochs):
    """Sigmoid-shaped ramp-up of the distillation terms (Laine & Aila), 0-based epoch.

        w(e) = exp(-5 * (1 - clip(e, 0, L) / L)^2)

    Works on Python numbers and on tensors (the model keeps the epoch in a variable).
    """
    if rampup_epochs <= 0:
        return 1.0 if not tf.is_tensor(epoch) else tf.ones_like(tf.cast(epoch, tf.float32))
    if tf.is_tensor(epoch):
        e = tf.clip_by_value(tf.cast(epoch, tf.float32), 0.0, float(rampup_epochs))
        phase = 1.0 - e / float(rampup_epochs)
        return tf.exp(-5.0 * phase * phase)
    e = min(max(float(epoch), 0.0), float(rampup_epochs))
    phase = 1.0 - e / float(rampup_epochs)
    return math.exp(-5.0 * phase * phase)
