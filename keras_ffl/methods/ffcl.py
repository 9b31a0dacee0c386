"""FFCL: Feature Fusion-based Collaborative Learning (paper 004, whose equations were lost).

This is the reading in METHODS.md, with T = 1 as the surviving text states ("the value 1
means the temperature parameter").  K >= 2 peer networks of any architectures; for peer k:

    L_k = CE(z_k)
          + FK:  kl(z_k <- z_f)                                  (feature knowledge)
          + RK:  1/(K-1) * sum_{j != k} kl(z_k <- z_j)            (response knowledge, DML-style)
          + NRK: kl(z_k <- z_k^pre)                               (network regularisation)

and for the fusion classifier, ``CE(z_f) + kl(z_f <- mean_k z_k)`` (the second term is
``ensemble_kd``).  ``z_f`` comes from FFL's fusion module (concatenate, depthwise 3x3, BN,
ReLU, 1x1, BN, ReLU, pool, dense) applied to the peers' *middle-layer* feature maps: the
output of each network's trunk (``fusion_layer="middle"``: the end of stage 2 of 3 in a CIFAR
ResNet or WRN, stage 3 of 4 in ResNet-18/34), undetached, so the fused loss trains the
peers' lower layers.  ``fusion_layer="last"`` fuses the last feature maps instead (FFL's place).

``z_k^pre`` is a frozen copy of peer k pre-trained alone with CE (a vanilla run of the same
architectures), always run in inference mode.  Each kind of knowledge is a switch; the
paper's ablation cases (its Table 5):

    case   A    B    C    D    E    F    G
    RK     x         x    x    x
    FK     x    x         x         x
    NRK    x    x    x                   x

Reported parts: each peer, their ensemble, ``fused`` (with FK) and ``pretrained{k}`` (with
NRK: the frozen teachers, for reference).
"""

import keras

from keras_ffl.backbones.base import MIDDLE_LAYER
from keras_ffl.layers.fusion import FusionModule
from keras_ffl.losses import as_float, cross_entropy, distillation_kl, mean_peer_kl
from keras_ffl.methods.base import OnlineDistiller
from keras_ffl.methods.ffcl_options import FUSION_LAYERS, FFCLOptions

DEFAULTS = FFCLOptions()


@keras.saving.register_keras_serializable(package="keras_ffl")
class FFCL(OnlineDistiller):
    method_name = "ffcl"

    def __init__(
        self,
        branches,
        num_classes=None,
        trunk=None,
        feature_knowledge=DEFAULTS.feature_knowledge,
        response_knowledge=DEFAULTS.response_knowledge,
        regularization_knowledge=DEFAULTS.regularization_knowledge,
        fusion_layer=DEFAULTS.fusion_layer,
        fusion_channels=None,
        fusion_weight_decay=DEFAULTS.fusion_weight_decay,
        ensemble_kd=DEFAULTS.ensemble_kd,
        sync_bn=False,
        **kwargs,
    ):
        if fusion_layer not in FUSION_LAYERS:
            raise ValueError(f"FFCL fusion_layer must be one of {FUSION_LAYERS}, got '{fusion_layer}'")
        if not (feature_knowledge or response_knowledge or regularization_knowledge):
            raise ValueError("FFCL with no kind of knowledge switched on is the vanilla baseline")
        self.feature_knowledge = bool(feature_knowledge)
        self.response_knowledge = bool(response_knowledge)
        self.regularization_knowledge = bool(regularization_knowledge)
        self.fusion_layer = fusion_layer
        self.ensemble_kd = bool(ensemble_kd)
        self.teacher_names = (("fused",) if self.feature_knowledge else ()) + (
            tuple(f"pretrained{k}" for k in range(len(branches))) if self.regularization_knowledge else ()
        )
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        self.fusion_weight_decay = float(fusion_weight_decay)
        self.sync_bn = sync_bn
        self.fusion_channels = None
        if self.feature_knowledge:
            if fusion_layer == "middle":
                # Same layers as the branches, one more output: no weights are duplicated.
                self.tapped = [
                    keras.Model(b.input, [*b.outputs, b.get_layer(MIDDLE_LAYER).output], name=f"{b.name}_tapped")
                    for b in self.branches
                ]
            channels = [self.fused_input(b).shape[-1] for b in self.branches]
            self.fusion_channels = int(fusion_channels or min(channels))
            self.fusion = FusionModule(self.num_classes, self.fusion_channels, sync_bn=sync_bn, name="fusion")
        if self.regularization_knowledge:
            # Fresh copies of each architecture; ``load_pretrained`` fills them, and the run's
            # own weights file carries them afterwards.
            self.pretrained = [keras.models.clone_model(b) for b in self.branches]
            for net in self.pretrained:
                net.trainable = False

    def fused_input(self, branch):
        return branch.get_layer(MIDDLE_LAYER).output if self.fusion_layer == "middle" else branch.outputs[1]

    def fused_maps(self, outputs):
        """The feature maps the fusion module concatenates (see ``fusion_layer``)."""
        return [taps[0] for taps in outputs["taps"]] if self.fusion_layer == "middle" else outputs["features"]

    def forward_branches(self):
        return self.tapped if self.feature_knowledge and self.fusion_layer == "middle" else self.branches

    def loss_term_names(self):
        k = range(len(self.branches))
        names = [f"ce_net{i}" for i in k]
        if self.feature_knowledge:
            names += ["ce_fused"] + (["kd_fused"] if self.ensemble_kd else []) + [f"kd_fk_net{i}" for i in k]
        if self.response_knowledge:
            names += [f"kd_rk_net{i}" for i in k]
        if self.regularization_knowledge:
            names += [f"kd_nrk_net{i}" for i in k]
        return names

    def build_teachers(self, outputs, training):
        teachers = {}
        if self.feature_knowledge:
            teachers["fused"], _ = self.fusion(self.fused_maps(outputs), training=training)
        if self.regularization_knowledge:
            for k, net in enumerate(self.pretrained):
                # Inference mode always: the frozen copy keeps its own BN statistics.
                teachers[f"pretrained{k}"] = as_float(net(outputs["images"], training=False)[0])
        return teachers

    def compute_losses(self, outputs, labels):
        logits, teachers, t = outputs["logits"], outputs["teachers"], self.temperature
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        if self.feature_knowledge:
            fused = teachers["fused"]
            terms["ce_fused"] = cross_entropy(fused, labels)
            if self.ensemble_kd:
                terms["kd_fused"] = distillation_kl(fused, outputs["ensemble"], t)
            terms.update({f"kd_fk_net{k}": distillation_kl(z, fused, t) for k, z in enumerate(logits)})
        if self.response_knowledge:
            terms.update({f"kd_rk_net{k}": mean_peer_kl(logits, k, t) for k in range(len(logits))})
        if self.regularization_knowledge:
            terms.update({f"kd_nrk_net{k}": distillation_kl(z, teachers[f"pretrained{k}"], t) for k, z in enumerate(logits)})
        return terms

    def weight_decay_groups(self):
        if not self.feature_knowledge:
            return super().weight_decay_groups()
        return self.decay_apart(self.fusion, self.fusion_weight_decay)

    def standalone_part(self, name):
        if name.startswith("pretrained"):
            inputs = keras.Input(shape=self.image_shape, name="images")
            return keras.Model(inputs, self.pretrained[int(name[len("pretrained"):])](inputs)[0], name=name)
        return None

    def load_pretrained(self, networks):
        """Copies the weights of trained networks (one per peer, same architectures) into
        the frozen copies."""
        if len(networks) != len(self.pretrained):
            raise ValueError(f"FFCL has {len(self.pretrained)} peers, got {len(networks)} pre-trained networks")
        for k, (frozen, trained) in enumerate(zip(self.pretrained, networks)):
            try:
                frozen.set_weights(trained.get_weights())
            except ValueError as e:
                raise ValueError(f"pre-trained network {k} does not match peer {k}'s architecture: {e}") from None

    def get_config(self):
        return {
            **super().get_config(),
            "feature_knowledge": self.feature_knowledge,
            "response_knowledge": self.response_knowledge,
            "regularization_knowledge": self.regularization_knowledge,
            "fusion_layer": self.fusion_layer,
            "fusion_channels": self.fusion_channels,
            "fusion_weight_decay": self.fusion_weight_decay,
            "ensemble_kd": self.ensemble_kd,
            "sync_bn": self.sync_bn,
        }

