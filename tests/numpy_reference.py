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


def dml_terms(logits, labels, temperature):
    k = len(logits)
    terms = {f"ce_net{i}": cross_entropy(z, labels) for i, z in enumerate(logits)}
    for i in range(k):
        terms[f"kd_net{i}"] = sum(distillation_kl(logits[i], logits[j], temperature) for j in range(k) if j != i) / (k - 1)
    return terms


def one_teacher(logits, gate_weights):
    """z_t = sum_k g_k z_k; gate_weights [B, K]."""
    return np.einsum("bk,kbc->bc", np.asarray(gate_weights, np.float64), np.stack(logits).astype(np.float64))


def one_gate(pooled, kernel, bias, bn_mean, bn_var, gamma, beta, eps=1e-5):
    """pool -> dense -> BN (given statistics) -> ReLU -> softmax."""
    h = pooled @ kernel + bias
    h = gamma * (h - bn_mean) / np.sqrt(bn_var + eps) + beta
    return softmax(np.maximum(h, 0.0))


def one_terms(logits, teacher, labels, temperature):
    terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
    terms["ce_teacher"] = cross_entropy(teacher, labels)
    for k, z in enumerate(logits):
        terms[f"kd_net{k}"] = distillation_kl(z, teacher, temperature)
    return terms


def afd_terms(logits, labels, temperature, d_fake, d_real, maps=None, mode="full"):
    """AFD with cyclic peers p = k-1; d_fake[k] = D_k(own map), d_real[k] = D_k(peer map)."""
    k = len(logits)
    peer = [(i - 1) % k for i in range(k)]
    terms = {f"ce_net{i}": cross_entropy(z, labels) for i, z in enumerate(logits)}
    if mode in ("full", "kd", "l1_kd"):
        terms.update({f"kd_net{i}": distillation_kl(logits[i], logits[peer[i]], temperature) for i in range(k)})
    if mode in ("full", "adversarial"):
        terms.update({f"adv_g{i}": float(np.mean((1 - np.asarray(d_fake[i])) ** 2)) for i in range(k)})
        terms.update({f"adv_d{i}": float(np.mean((1 - np.asarray(d_real[i])) ** 2 + np.asarray(d_fake[i]) ** 2))
                      for i in range(k)})
    if mode in ("l1", "l1_kd"):
        terms.update({f"l1_net{i}": float(np.mean(np.abs(maps[i] - maps[peer[i]]))) for i in range(k)})
    return terms


def ffcl_terms(logits, fused, pretrained, labels, temperature, fk=True, rk=True, nrk=True, ensemble_kd=True):
    """FFCL (METHODS.md reading): CE per peer; FK from the fused classifier (which learns CE
    and, with ensemble_kd, from the ensemble); RK averaged over peers; NRK from each frozen copy."""
    k = len(logits)
    terms = {f"ce_net{i}": cross_entropy(z, labels) for i, z in enumerate(logits)}
    if fk:
        terms["ce_fused"] = cross_entropy(fused, labels)
        if ensemble_kd:
            terms["kd_fused"] = distillation_kl(fused, np.mean(np.stack(logits), axis=0), temperature)
        terms.update({f"kd_fk_net{i}": distillation_kl(z, fused, temperature) for i, z in enumerate(logits)})
    if rk:
        for i in range(k):
            terms[f"kd_rk_net{i}"] = sum(
                distillation_kl(logits[i], logits[j], temperature) for j in range(k) if j != i) / (k - 1)
    if nrk:
        terms.update({f"kd_nrk_net{i}": distillation_kl(z, pretrained[i], temperature) for i, z in enumerate(logits)})
    return terms


def kl_rows(student, teacher, temperature, eps=1e-7):
    """Per-example KL(teacher || student) at T, times T^2; eps = 0: the textbook form."""
    t = softmax(np.asarray(teacher, np.float64) / temperature) + eps
    return temperature**2 * (t * (np.log(t) - log_softmax(np.asarray(student, np.float64) / temperature))).sum(-1)


def cl_ilr_terms(logits, labels, temperature, eps):
    """CL-ILR: each head's CE, and its KL to the mean of the other heads' logits."""
    k = len(logits)
    terms = {f"ce_net{i}": cross_entropy(z, labels) for i, z in enumerate(logits)}
    for i in range(k):
        others = sum(np.asarray(logits[j], np.float64) for j in range(k) if j != i) / (k - 1)
        terms[f"kd_net{i}"] = float(kl_rows(logits[i], others, temperature, eps).mean())
    return terms


def okddip_terms(logits, pooled, w_query, w_key, labels, temperature, leader=True):
    """OKDDip: attention targets t_i = sum_j softmax_j(q_i . k_j) z_j over the peers; the leader
    (last) learns from the peers' mean."""
    peers = len(logits) - (1 if leader else 0)
    q = [np.asarray(pooled[i], np.float64) @ w_query for i in range(peers)]  # [B, d']
    key = [np.asarray(pooled[j], np.float64) @ w_key for j in range(peers)]
    terms = {f"ce_net{i}": cross_entropy(z, labels) for i, z in enumerate(logits)}
    for i in range(peers):
        scores = np.stack([(q[i] * key[j]).sum(-1) for j in range(peers)], axis=1)  # [B, peers]
        weights = softmax(scores)
        target = sum(weights[:, j:j + 1] * np.asarray(logits[j], np.float64) for j in range(peers))
        terms[f"kd_net{i}"] = float(kl_rows(logits[i], target, temperature).mean())
    if leader:
        mean = sum(np.asarray(logits[j], np.float64) for j in range(peers)) / peers
        terms[f"kd_net{len(logits) - 1}"] = float(kl_rows(logits[-1], mean, temperature).mean())
    return terms


def kdcl_minlogit(logits, labels):
    z = np.stack([np.asarray(x, np.float64) for x in logits])  # [K, B, C]
    true = z[:, np.arange(z.shape[1]), labels]  # [K, B]
    return (z - true[:, :, None]).min(axis=0)


def mcl_contrastive(memory_rows, embeddings, memory_size, tau, eps=1e-7):
    """One ordered pair's per-example loss (CRD's NCE with a per-batch normaliser)."""
    scores = np.exp(np.einsum("bjd,bd->bj", memory_rows, embeddings) / tau)
    p = scores / (scores.mean() * memory_size)
    noise = (p.shape[1] - 1) / memory_size  # m Pn, with m = k negatives and Pn = 1 / N
    return -(np.log(p[:, 0] / (p[:, 0] + noise + eps)) + np.log(noise / (p[:, 1:] + noise + eps)).sum(1))


def mcl_memory_update(memory, indices, embeddings, momentum):
    memory = np.array(memory, np.float64)
    rows = memory[indices] * momentum + embeddings * (1 - momentum)
    memory[indices] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return memory


def pcl_terms(logits, ensemble, ema_logits, labels, temperature):
    k = len(logits)
    terms = {f"ce_net{i}": cross_entropy(z, labels) for i, z in enumerate(logits)}
    terms["ce_peer_ensemble"] = cross_entropy(ensemble, labels)
    # The unofficial code's plain KL (F.kl_div on F.softmax): no 1e-7 on the teacher.
    terms.update({f"kd_pe_net{i}": float(kl_rows(z, ensemble, temperature, eps=0.0).mean())
                  for i, z in enumerate(logits)})
    for i in range(k):
        terms[f"kd_pm_net{i}"] = float(np.mean([kl_rows(logits[i], ema_logits[j], temperature, eps=0.0).mean()
                                                for j in range(k) if j != i]))
    return terms
