"""PCL: Peer Collaborative Learning for online knowledge distillation (Wu & Gong, AAAI 2021).

m peers on a shared trunk (ONE's split), each fed its *own* random augmentation of the image
(inputs ``{"images", "views": [B, m, H, W, C]}``: the trunk runs once per view; without views
every peer sees the images).  Two teachers:

* the **peer ensemble teacher**: ``z_e = Linear(m*d -> C)(concat[f_1 .. f_m])`` over the
  peers' pooled features (not detached), trained with CE;
* the **peer mean teacher**: the temporal mean (EMA of the weights) of the whole multi-branch
  network, ``theta' <- a theta' + (1 - a) theta`` after every step with
  ``a = min(1 - 1/(step + 1), ema_decay)`` (step 0 copies); it runs in training mode on the same
  views (batch statistics, its own running statistics, which are not averaged) and peer j's
  temporal mean gives z'_j.

    L = CE(z_e) + sum_i [ CE(z_i) + w(e) kl(z_i <- sg(z_e)) + w(e) / (m-1) sum_{j != i} kl(z_i <- z'_j) ]   (T = 3)

The deployed model is a temporal-mean peer (``part("ema0")``; the report lists every
``ema{j}``).  No official code exists: this follows the unofficial code
(shaoeric/Peer-Collaborative-Learning-for-Online-Knowledge-Distillation) except its ramp-up,
which is broken there (``exp(-5 (1 - e/1)^2)``): here the 80-epoch ramp-up of METHODS.md, an
assumption.  The KL is the plain one of that code (``F.kl_div`` on ``F.softmax``, no 1e-7).  EMA decay 0.999 and the deployed peer come from that code and the paper's
abstract.

The temporal-mean copies are Keras-trainable (so that their BatchNorm runs in training mode)
but no optimiser, weight decay or gradient touches them: ``after_step`` alone moves them.
"""

import keras
from keras import ops

from keras_ffl.initializers import linear_like
from keras_ffl.losses import cross_entropy, distillation_kl
from keras_ffl.methods.base import Gradient, OnlineDistiller, Update
from keras_ffl.methods.pcl_options import PCLOptions
from keras_ffl import engines


@keras.saving.register_keras_serializable(package="keras_ffl")
class PCL(OnlineDistiller):
    method_name = "pcl"

    def __init__(self, branches, num_classes=None, trunk=None, ema_decay=PCLOptions().ema_decay, **kwargs):
        self.teacher_names = ("peer_ensemble", *[f"ema{k}" for k in range(len(branches))])
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        self.ema_decay = float(ema_decay)
        features = self.branches[0].outputs[1].shape[-1]
        # A module of the network in the code, so its init loop's linear rule applies.
        kernel, bias = linear_like(self.branches[0], features * len(self.branches))
        self.ensemble_classifier = keras.layers.Dense(self.num_classes, kernel_initializer=kernel,
                                                      bias_initializer=bias, name="ensemble_classifier")
        self.ema_trunk = self.temporal_mean_of(self.trunk)
        self.ema_branches = [self.temporal_mean_of(branch) for branch in self.branches]
        self.ema_steps = self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False,
                                         name="ema_steps", aggregation="only_first_replica")

    @staticmethod
    def temporal_mean_of(model):
        copy = keras.models.clone_model(model)
        copy.set_weights(model.get_weights())
        return copy

    def student_models(self):
        return [self.trunk, *self.branches]

    def ema_models(self):
        return [self.ema_trunk, *self.ema_branches]

    def student_variables(self):
        """What the optimiser trains: the peers, the trunk and the ensemble classifier."""
        ema = {id(v) for m in self.ema_models() for v in m.trainable_variables}
        return [v for v in self.trainable_variables if id(v) not in ema]

    def optimizer_roles(self):
        return {"optimizer": self.student_variables()}

    def weight_decay_groups(self):
        return [(self.weight_decay, self.student_variables())]

    def update_plan(self):
        variables = self.student_variables()
        return [[Update("optimizer", (Gradient(tuple(self.term_names), variables, tuple(self.weight_decay_groups())),))]]

    def branch_inputs(self, images, extras, training):
        views = extras.get("views")
        if views is None:
            shared = self.trunk(images, training=training)
            return shared, [shared] * len(self.branches)
        shared = [self.trunk(views[:, k], training=training) for k in range(len(self.branches))]
        return shared[0], shared

    def build_teachers(self, outputs, training):
        pooled = [ops.mean(f, axis=(1, 2)) for f in outputs["features"]]
        teachers = {"peer_ensemble": self.ensemble_classifier(ops.concatenate(pooled, axis=-1))}
        views = outputs["extras"].get("views")
        for k, branch in enumerate(self.ema_branches):
            x = outputs["images"] if views is None else views[:, k]
            teachers[f"ema{k}"] = ops.stop_gradient(branch(self.ema_trunk(x, training=training), training=training)[0])
        return teachers

    def loss_term_names(self):
        k = range(len(self.branches))
        return [f"ce_net{i}" for i in k] + ["ce_peer_ensemble"] + [f"kd_pe_net{i}" for i in k] + \
            [f"kd_pm_net{i}" for i in k]

    def compute_losses(self, outputs, labels):
        logits, teachers, t = outputs["logits"], outputs["teachers"], self.temperature
        count = len(logits)
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        terms["ce_peer_ensemble"] = cross_entropy(teachers["peer_ensemble"], labels)
        ensemble = ops.stop_gradient(teachers["peer_ensemble"])
        terms.update({f"kd_pe_net{k}": distillation_kl(z, ensemble, t, eps=0.0) for k, z in enumerate(logits)})
        for k, z in enumerate(logits):
            peers = [distillation_kl(z, teachers[f"ema{j}"], t, eps=0.0) for j in range(count) if j != k]
            terms[f"kd_pm_net{k}"] = sum(peers[1:], peers[0]) / float(count - 1)
        return terms

    def standalone_part(self, name):
        if name.startswith("ema"):
            inputs = keras.Input(shape=self.image_shape, name="images")
            branch = self.ema_branches[int(name[len("ema"):])]
            return keras.Model(inputs, branch(self.ema_trunk(inputs))[0], name=name)
        return None

    def update_temporal_mean(self):
        """theta' <- a theta' + (1 - a) theta, a = min(1 - 1/(step + 1), ema_decay)."""
        step = ops.cast(self.ema_steps, self.loss_dtype)
        a = ops.minimum(1.0 - 1.0 / (step + 1.0), self.ema_decay)
        for student, ema in zip(self.student_models(), self.ema_models()):
            for theta, mean in zip(student.trainable_variables, ema.trainable_variables):
                mean.assign(a * mean + (1.0 - a) * theta)
        self.ema_steps.assign(self.ema_steps + 1)

    def after_step(self, outputs):
        engines.current().cross_replica(self.update_temporal_mean)

    def get_config(self):
        return {**super().get_config(), "ema_decay": self.ema_decay}
