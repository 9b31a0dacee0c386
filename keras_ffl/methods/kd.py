"""Offline KD (Hinton et al., 2015): a trained, frozen teacher and one student.

    L = CE(z_s) + w(e) * kl(z_s <- z_t)        (T = 3 and no ramp-up by default)

The teacher is any ``keras.Model`` from images to logits: from the command line, any part
(``net0``, ``fused``, ``ensemble``...) of a finished keras_ffl run.  It is frozen and always
runs in inference mode.  The same KL as every other method (T^2, detached teacher) keeps the
numbers comparable: keras.distillation's ``LogitsDistillation`` applies
``keras.losses.KLDivergence`` to probabilities, which clips both sides.
"""

import keras

from keras_ffl.losses import as_float, cross_entropy, distillation_kl
from keras_ffl.methods.base import OnlineDistiller, serialize_model


@keras.saving.register_keras_serializable(package="keras_ffl")
class OfflineKD(OnlineDistiller):
    method_name = "kd"
    teacher_names = ("teacher",)

    def __init__(self, branches, num_classes=None, trunk=None, teacher=None, **kwargs):
        if teacher is None:
            raise ValueError("offline KD needs a trained teacher model (images -> logits)")
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        teacher.trainable = False
        for layer in teacher.layers:  # a deserialized functional model does not pass it on itself
            layer.trainable = False
        self.teacher = teacher

    def loss_term_names(self):
        k = range(len(self.branches))
        return [f"ce_net{i}" for i in k] + [f"kd_net{i}" for i in k]

    def build_teachers(self, outputs, training):
        # Always inference mode: the teacher's BN statistics stay those it was trained with.
        return {"teacher": as_float(self.teacher(outputs["images"], training=False))}

    def compute_losses(self, outputs, labels):
        teacher = outputs["teachers"]["teacher"]
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(outputs["logits"])}
        terms.update({f"kd_net{k}": distillation_kl(z, teacher, self.temperature) for k, z in enumerate(outputs["logits"])})
        return terms

    def get_config(self):
        return {**super().get_config(), "teacher": serialize_model(self.teacher)}

    @classmethod
    def nested_model_keys(cls):
        return ("teacher",)
