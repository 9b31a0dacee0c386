"""FFCL's settings and facts (its model: ``ffcl.py``)."""

import dataclasses
import os

from keras_ffl.errors import ConfigError
from keras_ffl.methods.declaration import MethodOptions, RequiredRun, setting

FUSION_LAYERS = ("middle", "last")
#: Where the pre-training stage runs, inside the FFCL run's model_dir.
PRETRAIN_SUBDIR = "pretrain"


@dataclasses.dataclass(frozen=True)
class FFCLOptions(MethodOptions):
    NAME = "ffcl"
    TITLE = "FFCL, feature fusion-based collaborative learning (paper 004): fused middle layers + DML + frozen twins"
    MODEL = "keras_ffl.methods.ffcl:FFCL"
    # The paper (004): "the value 1 means the temperature parameter"; no ramp-up mentioned.
    TEMPERATURE = 1.0
    RAMPUP_EPOCHS = 0
    QUICKSTART_FLAGFILE = "zoo/quickstart_ffcl_fashion_mnist.flags"

    feature_knowledge: bool = setting(True, "Feature knowledge: fuse the peers' feature maps, train the fused "
                                      "classifier, distil it into every peer (off: ablation cases C, E, G).",
                                      old_flag="feature_knowledge")
    response_knowledge: bool = setting(True, "Response knowledge: peers learn from each other's logits, DML-style "
                                       "(off: cases B, F, G).", old_flag="response_knowledge")
    regularization_knowledge: bool = setting(True, "Network regularisation: a frozen copy of each peer, pre-trained "
                                             "alone with CE, teaches its live twin (off: cases D, E, F).",
                                             old_flag="regularization_knowledge")
    fusion_layer: str = setting("middle", "Which feature maps are fused: middle (the trunk's output, the paper's "
                                "middle layer) or last (FFL's place).", choices=FUSION_LAYERS, old_flag="fusion_layer")
    fusion_channels: int = setting(0, "Fusion module output channels (0 = the smallest peer channel count).", low=0,
                                   old_flag="fusion_channels")
    fusion_weight_decay: float = setting(5e-4, "L2 weight decay of the fusion module (the paper's 5e-4, like every "
                                         "weight).", low=0.0, old_flag="fusion_weight_decay")
    ensemble_kd: bool = setting(True, "The fused classifier's kl(fused <- mean of the peers).", old_flag="ensemble_kd")
    pretrained_dir: str = setting("", "A finished run (vanilla, same backbones and data) whose net_k teaches peer k "
                                  "(default: <model_dir>/pretrain, trained first by the same command when missing).",
                                  old_flag="pretrained_dir", path=True)
    pretrain_epochs: int = setting(0, "Epochs of the pre-training stage (0 = --epochs), same schedule otherwise.",
                                   low=0, old_flag="pretrain_epochs")

    @classmethod
    def legacy_values(cls, values):
        if values.get("fusion_weight_decay") == -1.0:  # the old "the method's own" marker
            values = {k: v for k, v in values.items() if k != "fusion_weight_decay"}
        return values

    def validated(self, run, check_data):
        if not (self.feature_knowledge or self.response_knowledge or self.regularization_knowledge):
            raise ConfigError("--method=ffcl with --noffcl_feature_knowledge --noffcl_response_knowledge "
                              "--noffcl_regularization_knowledge is plain cross-entropy: use --method=vanilla")
        if not self.regularization_knowledge:
            if self.pretrained_dir:
                raise ConfigError("--ffcl_pretrained_dir is only used with --ffcl_regularization_knowledge")
            return self
        if not self.pretrained_dir:
            return dataclasses.replace(self, pretrained_dir=os.path.join(run.model_dir, PRETRAIN_SUBDIR))
        return self

    def own_stage_dir(self, run):
        return os.path.normpath(self.pretrained_dir) == os.path.normpath(os.path.join(run.model_dir, PRETRAIN_SUBDIR))

    def required_runs(self, run):
        if not self.regularization_knowledge or self.own_stage_dir(run):
            return []  # trained by this command's first stage
        return [RequiredRun("ffcl_pretrained_dir", self.pretrained_dir, same_networks=True, remedy="train it first")]

    def pretraining(self, run):
        if not self.regularization_knowledge:
            return None
        return "vanilla", dict(model_dir=self.pretrained_dir, epochs=self.pretrain_epochs or run.epochs)

    def training_summary(self, run):
        return {"pretrain_epochs": self.pretrain_epochs or run.epochs} if self.regularization_knowledge else {}

    def model_arguments(self, run, context):
        return dict(feature_knowledge=self.feature_knowledge, response_knowledge=self.response_knowledge,
                    regularization_knowledge=self.regularization_knowledge, fusion_layer=self.fusion_layer,
                    fusion_channels=self.fusion_channels or None, fusion_weight_decay=self.fusion_weight_decay,
                    ensemble_kd=self.ensemble_kd, sync_bn=context.sync_bn)

    def warm_start(self, model, run, context):
        """The frozen NRK teachers get the pre-trained run's networks."""
        if self.regularization_knowledge:
            model.load_pretrained(context.load_networks(self.pretrained_dir))
