"""KDCL's settings and facts (its model: ``kdcl.py``)."""

import dataclasses

from keras_ffl.errors import ConfigError
from keras_ffl.methods.declaration import MethodOptions, setting

TEACHERS = ("minlogit", "naive", "linear", "general")


@dataclasses.dataclass(frozen=True)
class KDCLOptions(MethodOptions):
    NAME = "kdcl"
    TITLE = "KDCL, KD via collaborative learning (Guo et al. 2020): a teacher built from every network's logits"
    MODEL = "keras_ffl.methods.kdcl:KDCL"
    # No official code: T = 2, no ramp-up (assumptions, see kdcl.py).
    TEMPERATURE = 2.0
    RAMPUP_EPOCHS = 0
    QUICKSTART_FLAGFILE = "zoo/quickstart_kdcl_fashion_mnist.flags"
    SHORT_BUDGET_FLAGS = ("--rampup_epochs=0",)

    teacher: str = setting("minlogit", "The teacher: minlogit, naive, linear (simplex weights per batch) or general "
                           "(Perrone-Cooper weights from --kdcl_holdout held-out training images, refreshed every "
                           "epoch).", choices=TEACHERS, old_flag="kdcl_teacher")
    holdout: int = setting(0, "With --kdcl_teacher=general: training images held out (and not trained on) to "
                           "estimate the teacher's weights.", low=0, old_flag="kdcl_holdout")
    ce_weight: float = setting(1.0, "Weight of each network's cross-entropy.", low=0.0, old_flag="ce_weight")
    kd_weight: float = setting(1.0, "Weight of each network's KL to the teacher (lambda).", low=0.0,
                               old_flag="kd_weight")

    def validated(self, run, check_data):
        if self.teacher == "general" and self.holdout <= 0:
            raise ConfigError("--kdcl_teacher=general needs --kdcl_holdout, the training images held out to weigh "
                              "the networks")
        if self.teacher != "general" and self.holdout:
            raise ConfigError("--kdcl_holdout is for --kdcl_teacher=general")
        return self

    def data_needs(self, run):
        return dict(views=run.num_branches, holdout=self.holdout)

    def callbacks(self, run, data):
        if data.holdout is None:
            return []
        from keras_ffl.methods.kdcl import GeneralWeights

        return [GeneralWeights(*data.holdout)]

    def model_arguments(self, run, context):
        return dict(teacher=self.teacher, ce_weight=self.ce_weight, kd_weight=self.kd_weight)
