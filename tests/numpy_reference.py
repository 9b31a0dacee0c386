"""Independent numpy (float64) implementations of the formulas in METHODS.md.

Nothing here imports keras_ffl: the tests compare the library against these.
"""

import numpy as np


def log_softmax(z):
    z = np.asarray(z, np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


def cross_entropy(logits, labels):
    lp = log_softmax(logits)
    return float(np.mean(-lp[np.arange(len(labels)), labels]))


def distillation_kl(student, teacher, temperature):
    t = softmax(np.asarray(teacher, np.float64) / temperature) + 1e-7
    per_example = (t * (np.log(t) - log_softmax(np.asarray(student, np.float64) / temperature))).sum(axis=-1)
    return float(temperature**2 * per_example.mean())


def rampup(epoch, length):
    if length == 0:
        return 1.0
    e = min(max(epoch, 0), length)
    return float(np.exp(-5.0 * (1.0 - e / length) ** 2))


def ffl_terms(logits, fused, labels, temperature, ensemble_kd=True, fusion_kd=True):
    """FFL's named terms (unweighted batch means)."""
    ensemble = np.mean(np.stack(logits), axis=0)
    terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
    terms["ce_fused"] = cross_entropy(fused, labels)
    if ensemble_kd:
        terms["kd_fused"] = distillation_kl(fused, ensemble, temperature)
    if fusion_kd:
        for k, z in enumerate(logits):
            terms[f"kd_net{k}"] = distillation_kl(z, fused, temperature)
    return terms


def ffl_total(logits, fused, labels, temperature, epoch, rampup_epochs, **ablation):
    w = rampup(epoch, rampup_epochs)
    terms = ffl_terms(logits, fused, labels, temperature, **ablation)
    return sum((w if name.startswith("kd_") else 1.0) * v for name, v in terms.items())
