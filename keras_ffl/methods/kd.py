"""Offline KD (Hinton et al., 2015): a trained, frozen teacher and one student.

    L = CE(z_s) + w(e) * kl(z_s <- z_t)        (T = 3 by default; ``--rampup_epochs=0`` for none)

The teacher is any part (``net0``, ``fused``, ``ensemble``...) of a finished keras_ffl run,
rebuilt from its model_dir through the same ``build`` path and frozen.  The same KL as every
other method (T^2, detached teacher) keeps the numbers comparable: keras.distillation's
``LogitsDistillation`` applies ``keras.losses.KLDivergence`` to probabilities, which clips both
sides.
"""

from keras import ops

from keras_ffl.losses import cross_entropy, distillation_kl
from keras_ffl.methods.base import OnlineDistiller


class OfflineKD(OnlineDistiller):
    teacher_names = ("teacher",)

    def __init__(self, branches, num_classes, trunk=None, teacher=None, **kwargs):
        if teacher is None:
            raise ValueError("offline KD needs a trained teacher model (images -> logits)")
        super().__init__(branches, num_classes, trunk=trunk, min_branches=1, **kwargs)
        teacher.trainable = False
        self.teacher = teacher

    def loss_term_names(self):
        k = range(len(self.branches))
        return [f"ce_net{i}" for i in k] + [f"kd_net{i}" for i in k]

    def build_teachers(self, outputs, training):
        # Always inference mode: the teacher's BN statistics stay those it was trained with.
        return {"teacher": ops.cast(self.teacher(outputs["images"], training=False), "float32")}

    def compute_losses(self, outputs, labels):
        teacher = outputs["teachers"]["teacher"]
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(outputs["logits"])}
        terms.update({f"kd_net{k}": distillation_kl(z, teacher, self.temperature) for k, z in enumerate(outputs["logits"])})
        return terms


def load_teacher(teacher_dir, part):
    """Rebuilds a finished run from its model_dir and returns ``part`` as images -> logits."""
    from keras_ffl.build import load_run, part_model
    from keras_ffl.errors import ConfigError

    model, config = load_run(teacher_dir)
    try:
        return part_model(model, config, part)
    except ConfigError as e:
        raise ConfigError(f"--teacher_part={part}: {e}") from None


def kd_options(config):
    return dict(teacher=load_teacher(config.teacher_dir, config.teacher_part))
