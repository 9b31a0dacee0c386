"""Pure loss functions shared by every method, written once in ``keras.ops``.

Each returns *per-example* values (shape ``[batch]``); the engine of the running backend turns
them into a (replica-aware) mean.  ``tests/test_losses.py`` checks them against numpy on every
backend.
"""

import math

from keras import ops

# Added to the teacher's probabilities before the log, as in the FFL and ONE code.
# The distribution is deliberately not renormalised afterwards.
TEACHER_EPS = 1e-7


def as_float(x):
    """Half-precision tensors to float32; float32 and float64 stay as they are, so a float64
    reference run keeps its precision."""
    x = ops.convert_to_tensor(x)
    return ops.cast(x, "float32") if ops.dtype(x) in ("float16", "bfloat16") else x


def cross_entropy(logits, labels):
    """Softmax cross-entropy against integer labels, per example."""
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    return ops.sparse_categorical_crossentropy(labels, as_float(logits), from_logits=True)


def distillation_kl(student_logits, teacher_logits, temperature, scale_by_t2=True, detach=True, eps=TEACHER_EPS):
    """KL(teacher || student) on temperature-softened distributions, per example.

    The authors' form (FFL, ONE):

        t  = stop_gradient(softmax(z_t / T) + 1e-7)
        kl = T^2 * sum_c t * (log t - log_softmax(z_s / T))

    ``detach=False`` lets the gradient reach the teacher's logits (OKDDip's ``KL_Loss``, whose
    attention weights learn only through the target); ``eps=0`` is the textbook KL on the
    teacher's log-softmax (MCL-OKD's CL-ILR).  ``keras.losses.KLDivergence`` clips both sides
    and is not the same function.
    """
    temperature = float(temperature)
    student = as_float(student_logits) / temperature
    teacher = as_float(teacher_logits) / temperature
    if eps:
        t = ops.softmax(teacher, axis=-1) + eps
        log_t = ops.log(t)
    else:
        log_t = ops.log_softmax(teacher, axis=-1)
        t = ops.exp(log_t)
    if detach:
        t, log_t = ops.stop_gradient(t), ops.stop_gradient(log_t)
    kl = ops.sum(t * (log_t - ops.log_softmax(student, axis=-1)), axis=-1)
    if scale_by_t2:
        kl = kl * (temperature**2)
    return kl


def mean_peer_kl(logits, k, temperature):
    """``1/(K-1) * sum_{j != k} kl(z_k <- z_j)``: network k learning from each of its peers
    (DML's term, FFCL's response knowledge), per example."""
    peers = [distillation_kl(logits[k], z, temperature) for j, z in enumerate(logits) if j != k]
    return sum(peers[1:], peers[0]) / float(len(peers))


def squared_error_to(target, predictions):
    """``(target - predictions)^2`` per example, for the least-squares GAN terms."""
    return ops.square(target - as_float(predictions))


def rampup_weight(epoch, rampup_epochs, dtype="float32"):
    """Sigmoid-shaped ramp-up of the distillation terms (Laine & Aila), 0-based epoch.

        w(e) = exp(-5 * (1 - clip(e, 0, L) / L)^2)

    Works on Python numbers and on tensors or variables (the model keeps the epoch in one);
    ``dtype`` is the precision of the result (float64 in a float64 reference run).
    """
    if isinstance(epoch, (int, float)):
        if rampup_epochs <= 0:
            return 1.0
        e = min(max(float(epoch), 0.0), float(rampup_epochs))
        phase = 1.0 - e / float(rampup_epochs)
        return math.exp(-5.0 * phase * phase)
    epoch = ops.cast(epoch, dtype)
    if rampup_epochs <= 0:
        return ops.ones_like(epoch)
    phase = 1.0 - ops.clip(epoch, 0.0, float(rampup_epochs)) / float(rampup_epochs)
    return ops.exp(-5.0 * phase * phase)
