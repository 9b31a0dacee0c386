"""AFD's settings and facts (its model: ``afd.py``)."""

import dataclasses

from keras_ffl.methods.declaration import MethodOptions, setting

AFD_MODES = ("full", "adversarial", "kd", "l1", "l1_kd")


@dataclasses.dataclass(frozen=True)
class AFDOptions(MethodOptions):
    NAME = "afd"
    TITLE = "AFD, adversarial feature distillation (Chung et al. 2020, paper 003): discriminators on feature maps"
    MODEL = "keras_ffl.methods.afd:AFD"
    # The paper (003, Sec. 4): T = 3, the KL at full weight from the first epoch.
    RAMPUP_EPOCHS = 0
    QUICKSTART_FLAGFILE = "zoo/quickstart_afd_fashion_mnist.flags"

    mode: str = setting("full", "full (KL + adversarial), adversarial only, kd only, or the direct L1 feature "
                        "alignment baselines l1 and l1_kd (paper Tables 1-2).", choices=AFD_MODES, old_flag="afd_mode")
    feature_lr: float = setting(2e-5, "Adam learning rate of the feature extractors and discriminators.",
                                low=0.0, low_open=True, old_flag="feature_lr")
    feature_lr_milestones: tuple = setting((75, 150), "Epochs at which the feature learning rate is multiplied by "
                                           "--lr_gamma.", old_flag="feature_lr_milestones", integers=True)
    feature_weight_decay: float = setting(0.1, "PyTorch-style L2 weight decay of the Adam (feature) update.",
                                          low=0.0, old_flag="feature_weight_decay")

    def validated(self, run, check_data):
        from keras_ffl.errors import ConfigError

        milestones = list(self.feature_lr_milestones)
        if milestones != sorted(set(milestones)) or any(m <= 0 for m in milestones):
            raise ConfigError(f"--afd_feature_lr_milestones must be increasing positive epochs, got {milestones}")
        return self

    def learning_rate_schedules(self, run):
        if self.mode == "kd":
            return []
        return [("afd_feature_lr", self.feature_lr, run.lr_gamma, self.feature_lr_milestones)]

    def training_summary(self, run):
        if self.mode == "kd":
            return {}
        return {"feature_optimizer": f"Adam lr {self.feature_lr:g}, x{run.lr_gamma:g} at epochs "
                                     f"{','.join(map(str, self.feature_lr_milestones))}"}

    def model_arguments(self, run, context):
        return dict(mode=self.mode, feature_weight_decay=self.feature_weight_decay, sync_bn=context.sync_bn)

    def compile_arguments(self, run, steps_per_epoch, context):
        """The feature optimiser: Adam, lr 2e-5 x0.1 at epochs 75 and 150 (paper 003 Sec. 4)."""
        if self.mode == "kd":
            return {}
        import keras

        schedule = context.step_schedule(self.feature_lr, self.feature_lr_milestones, run.lr_gamma, steps_per_epoch)
        return {"feature_optimizer": keras.optimizers.Adam(learning_rate=schedule)}
