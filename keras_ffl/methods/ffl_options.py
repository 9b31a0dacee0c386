"""FFL's settings and facts (its model: ``ffl.py``)."""

import dataclasses

from keras_ffl import specs
from keras_ffl.errors import ConfigError
from keras_ffl.methods.declaration import MethodOptions, cifar_resnet_depth, setting

FUSION_MODES = ("module", "average")


@dataclasses.dataclass(frozen=True)
class FFLOptions(MethodOptions):
    NAME = "ffl"
    TITLE = "FFL, feature fusion learning (Kim et al., paper 000): fusion module + mutual KD"
    MODEL = "keras_ffl.methods.ffl:FFL"
    TOPOLOGIES = ("shared", "independent")
    QUICKSTART_FLAGFILE = "zoo/quickstart_fashion_mnist.flags"
    SHORT_BUDGET_FLAGS = ("--rampup_epochs=1",)

    fusion: str = setting("module", "The paper's fusion module, or feature averaging (ablation case B).",
                          choices=FUSION_MODES, old_flag="fusion")
    fusion_channels: int = setting(0, "Fusion module output channels N (0 = the smallest sub-network channel count, "
                                   "the paper's CIFAR choice).", low=0, old_flag="fusion_channels")
    fusion_weight_decay: float = setting(1e-5, "L2 weight decay of the fusion module (the FFL code's 1e-5).", low=0.0,
                                         old_flag="fusion_weight_decay")
    ensemble_kd: bool = setting(True, "The ensemble KD term kl(fused <- ensemble) (off = ablation case C).",
                                old_flag="ensemble_kd")
    fusion_kd: bool = setting(True, "The fusion KD terms kl(net_k <- fused) (off together with ensemble_kd = case D).",
                              old_flag="fusion_kd")

    def validated(self, run, check_data):
        if self.fusion == "average":
            channels = {specs.parse_backbone(b).feature_channels for b in run.backbones}
            if len(channels) > 1:
                raise ConfigError(f"--ffl_fusion=average needs equal feature channels, got {sorted(channels)}: use "
                                  "--ffl_fusion=module")
        return self

    def torch_reference_step(self, run, images, labels, bfloat16=False):
        """The FFL code's step: shared trunk (or independent networks) and fusion module, its loss
        at the run's ramp-up weight of epoch 0, Nesterov SGD with the fusion module's own decay."""
        depth = cifar_resnet_depth(run)
        if depth is None or self.fusion != "module" or not (self.ensemble_kd and self.fusion_kd):
            return None
        from keras_ffl import torch_reference as ref

        build = ref.FFL if run.topology == "shared" else ref.IndependentFFL
        model = build(depth, run.dataset_spec.num_classes, run.num_branches)
        weight = ref.rampup(0, run.rampup_epochs) if run.rampup_epochs else 1.0
        return ref.TrainStep(model, lambda out, y: ref.ffl_loss(out[0], out[1], y, run.temperature, weight),
                             ref.sgd(model, run.lr, run.weight_decay, self.fusion_weight_decay), images, labels,
                             bfloat16)

    def model_arguments(self, run, context):
        return dict(fusion_channels=self.fusion_channels or None, fusion=self.fusion,
                    fusion_weight_decay=self.fusion_weight_decay, ensemble_kd=self.ensemble_kd,
                    fusion_kd=self.fusion_kd, sync_bn=context.sync_bn)
