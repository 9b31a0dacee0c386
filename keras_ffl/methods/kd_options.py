"""Offline KD's settings and facts (its model: ``kd.py``)."""

import dataclasses

from keras_ffl.errors import ConfigError
from keras_ffl.methods.declaration import MethodOptions, RequiredRun, setting


@dataclasses.dataclass(frozen=True)
class OfflineKDOptions(MethodOptions):
    NAME = "kd"
    TITLE = "Offline KD (Hinton et al. 2015): students learn from a frozen, finished run"
    MODEL = "keras_ffl.methods.kd:OfflineKD"
    MIN_BRANCHES = 1
    DEFAULT_BRANCHES = 1
    RAMPUP_EPOCHS = 0
    STANDALONE = False
    QUICKSTART_FLAGFILE = "zoo/quickstart_kd_fashion_mnist.flags"

    teacher_dir: str = setting("", "The model_dir of a finished keras_ffl run to use as the frozen teacher.",
                               old_flag="teacher_dir", path=True)
    teacher_part: str = setting("net0", "Which part of the teacher run teaches (net0, net1, fused, ensemble, "
                                "teacher...).", old_flag="teacher_part")

    def validated(self, run, check_data):
        if not self.teacher_dir:
            raise ConfigError("--method=kd needs --kd_teacher_dir, the model_dir of a trained run")
        return self

    def required_runs(self, run):
        return [RequiredRun("kd_teacher_dir", self.teacher_dir, same_networks=False, remedy="train the teacher first")]

    def model_arguments(self, run, context):
        return dict(teacher=context.load_part(self.teacher_dir, self.teacher_part, "kd_teacher_part"))
