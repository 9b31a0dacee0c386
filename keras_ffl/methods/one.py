"""ONE: On-the-fly Native Ensemble (Lan et al., NeurIPS 2018), as in the authors' code.

A shared trunk with K branches of one architecture.  A gate on the trunk output, global
average pool -> dense(K) -> BN -> ReLU -> softmax, weighs the branch logits into the
teacher ("ONE-E"):

    z_t = sum_k g_k z_k
    L   = sum_k CE(z_k) + CE(z_t) + w(e) * sum_k kl(z_k <- z_t)        (T = 3)
"""

import keras
from keras import ops

from keras_ffl.initializers import linear_like
from keras_ffl.layers.gate import Gate
from keras_ffl.losses import as_float, cross_entropy, distillation_kl
from keras_ffl.methods.base import OnlineDistiller


@keras.saving.register_keras_serializable(package="keras_ffl")
class ONE(OnlineDistiller):
    method_name = "one"
    teacher_names = ("teacher",)

    def __init__(self, branches, num_classes=None, trunk=None, sync_bn=False, **kwargs):
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        self.sync_bn = sync_bn
        kernel, bias = linear_like(self.branches[0], self.trunk.output.shape[-1])
        self.gate = Gate(len(self.branches), sync_bn=sync_bn, kernel_initializer=kernel, bias_initializer=bias,
                         name="gate")

    def loss_term_names(self):
        k = range(len(self.branches))
        return [f"ce_net{i}" for i in k] + ["ce_teacher"] + [f"kd_net{i}" for i in k]

    def build_teachers(self, outputs, training):
        weights = as_float(self.gate(outputs["shared"], training=training))  # [B, K]
        stacked = ops.stack(outputs["logits"], axis=1)  # [B, K, C]
        return {"teacher": ops.sum(weights[:, :, None] * stacked, axis=1)}

    def compute_losses(self, outputs, labels):
        logits, teacher = outputs["logits"], outputs["teachers"]["teacher"]
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        terms["ce_teacher"] = cross_entropy(teacher, labels)
        for k, z in enumerate(logits):
            terms[f"kd_net{k}"] = distillation_kl(z, teacher, self.temperature)
        return terms

    def get_config(self):
        return {**super().get_config(), "sync_bn": self.sync_bn}
