"""FFL: Feature Fusion Learning (Kim et al., paper 000).

    z_e = mean_k z_k
    L   = sum_k CE(z_k) + CE(z_f) + w(e) * [ kl(z_f <- z_e) + sum_k kl(z_k <- z_f) ]

The fusion module sees the sub-networks' last feature maps *undetached*, so CE(z_f) and
kl(z_f <- z_e) train the sub-networks too.  The fusion module decays at its own rate
(1e-5 in the paper) while everything else decays at ``weight_decay`` (1e-4).

Ablations (paper Table II): ``fusion="average"`` (case B), ``ensemble_kd=False``
(case C), and both KD terms off (case D).
"""

import keras

from keras_ffl.layers.fusion import FusionModule
from keras_ffl.losses import cross_entropy, distillation_kl
from keras_ffl.methods.base import OnlineDistiller
from keras_ffl.methods.ffl_options import FFLOptions

DEFAULTS = FFLOptions()


@keras.saving.register_keras_serializable(package="keras_ffl")
class FFL(OnlineDistiller):
    method_name = "ffl"
    teacher_names = ("fused",)

    def __init__(
        self,
        branches,
        num_classes=None,
        trunk=None,
        fusion_channels=None,
        fusion=DEFAULTS.fusion,
        fusion_weight_decay=DEFAULTS.fusion_weight_decay,
        ensemble_kd=DEFAULTS.ensemble_kd,
        fusion_kd=DEFAULTS.fusion_kd,
        sync_bn=False,
        **kwargs,
    ):
        self.ensemble_kd, self.fusion_kd = bool(ensemble_kd), bool(fusion_kd)
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        channels = [b.outputs[1].shape[-1] for b in self.branches]
        # N = the smallest C_k, the paper's CIFAR choice; ImageNet uses sum(C_k).
        self.fusion_channels = int(fusion_channels or min(channels))
        self.fusion_mode = fusion
        self.fusion_weight_decay = float(fusion_weight_decay)
        self.sync_bn = sync_bn
        self.fusion = FusionModule(self.num_classes, self.fusion_channels, mode=fusion, sync_bn=sync_bn, name="fusion")

    def loss_term_names(self):
        names = [f"ce_net{k}" for k in range(len(self.branches))] + ["ce_fused"]
        if self.ensemble_kd:
            names.append("kd_fused")
        if self.fusion_kd:
            names += [f"kd_net{k}" for k in range(len(self.branches))]
        return names

    def fused_maps(self, outputs):
        """The feature maps the fusion module concatenates: the sub-networks' last ones."""
        return outputs["features"]

    def build_teachers(self, outputs, training):
        fused_logits, _ = self.fusion(self.fused_maps(outputs), training=training)
        return {"fused": fused_logits}

    def compute_losses(self, outputs, labels):
        logits, fused = outputs["logits"], outputs["teachers"]["fused"]
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        terms["ce_fused"] = cross_entropy(fused, labels)
        if self.ensemble_kd:
            terms["kd_fused"] = distillation_kl(fused, outputs["ensemble"], self.temperature)
        if self.fusion_kd:
            for k, z in enumerate(logits):
                terms[f"kd_net{k}"] = distillation_kl(z, fused, self.temperature)
        return terms

    def weight_decay_groups(self):
        return self.decay_apart(self.fusion, self.fusion_weight_decay)

    def get_config(self):
        return {
            **super().get_config(),
            "fusion_channels": self.fusion_channels,
            "fusion": self.fusion_mode,
            "fusion_weight_decay": self.fusion_weight_decay,
            "ensemble_kd": self.ensemble_kd,
            "fusion_kd": self.fusion_kd,
            "sync_bn": self.sync_bn,
        }
