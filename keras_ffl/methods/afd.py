"""AFD: online Adversarial Feature map Distillation (Chung et al., ICML 2020; paper 003).

K networks of any architectures, each split into a feature extractor G_k (up to its last
feature map) and a classifier.  Network k learns from its peer p = k-1 (cyclically; for
K = 2 the two learn from each other):

    logit loss (SGD):     CE(z_k) + kl(z_k <- z_p)                        (T = 3)
    feature loss (Adam):  L_Gk = (1 - D_k(T_k(G_k(x))))^2                 (LSGAN)
    discriminator (Adam): L_Dk = (1 - D_k(T_p(G_p(x))))^2 + D_k(T_k(G_k(x)))^2

D_k sees the peer's map as real and its own as fake.  T_k is a conv-BN-ReLU transfer
layer to the smallest channel count, present only where a network's count differs.

One forward pass, two updates: SGD applies the logit loss to the networks; one Adam step
applies L_G to the feature extractors (and transfer layers) and L_D to the discriminators.
The discriminators see detached maps, and L_G's gradient is applied to the extractors only,
so neither side receives the other's gradients.  The Adam lives on the model
(``feature_optimizer``), so checkpoints and BackupAndRestore carry its state.

Modes (paper Tables 1-2): ``full``, ``adversarial`` (no KL), ``kd`` (no adversarial),
``l1`` and ``l1_kd`` (direct L1 alignment of the transferred maps to the detached peer map,
optimised like the adversarial term, instead of discriminators).
"""

import keras
import tensorflow as tf
from keras import ops

from keras_ffl.layers.adversarial import Discriminator, TransferLayer
from keras_ffl.losses import cross_entropy, distillation_kl
from keras_ffl.methods.base import OnlineDistiller

AFD_MODES = ("full", "adversarial", "kd", "l1", "l1_kd")


class AFD(OnlineDistiller):
    independent_only = True

    def __init__(self, branches, num_classes, trunk=None, mode="full", feature_weight_decay=0.1, sync_bn=False,
                 **kwargs):
        if mode not in AFD_MODES:
            raise ValueError(f"AFD mode must be one of {AFD_MODES}, got '{mode}'")
        self.mode = mode
        super().__init__(branches, num_classes, trunk=trunk, **kwargs)
        self.feature_weight_decay = float(feature_weight_decay)
        self.sync_bn = sync_bn
        shapes = [tuple(b.outputs[1].shape[1:]) for b in self.branches]
        if len({s[:2] for s in shapes}) > 1:
            raise ValueError(f"AFD compares feature maps of one spatial size, got {[s[:2] for s in shapes]}")
        channels = min(s[-1] for s in shapes)
        self.transfers = [
            TransferLayer(channels, sync_bn, name=f"transfer{k}") if s[-1] != channels else None
            for k, s in enumerate(shapes)
        ]
        self.discriminators = (
            [Discriminator(sync_bn, name=f"discriminator{k}") for k in range(len(self.branches))]
            if self.adversarial
            else []
        )
        self.feature_optimizer = None
        # Ids, not the variables: a plain frozenset is not tracked as model state.
        self._extractor_ids = frozenset(id(v) for v in self.extractor_variables())

    @property
    def adversarial(self):
        return self.mode in ("full", "adversarial")

    @property
    def uses_kd(self):
        return self.mode in ("full", "kd", "l1_kd")

    @property
    def uses_l1(self):
        return self.mode in ("l1", "l1_kd")

    def peer(self, k):
        return (k - 1) % len(self.branches)

    def loss_term_names(self):
        k = range(len(self.branches))
        names = [f"ce_net{i}" for i in k]
        if self.uses_kd:
            names += [f"kd_net{i}" for i in k]
        if self.adversarial:
            names += [f"adv_g{i}" for i in k] + [f"adv_d{i}" for i in k]
        if self.uses_l1:
            names += [f"l1_net{i}" for i in k]
        return names

    def transferred(self, outputs, training):
        return [
            ops.cast(t(f, training=training) if t is not None else f, "float32")
            for t, f in zip(self.transfers, outputs["features"])
        ]

    def build_teachers(self, outputs, training):
        if self.adversarial or self.uses_l1:
            outputs["transferred"] = self.transferred(outputs, training)
        if self.adversarial:
            maps = outputs["transferred"]
            outputs["d_fake"] = [d(m, training=training) for d, m in zip(self.discriminators, maps)]
            outputs["d_real"] = [
                d(tf.stop_gradient(maps[self.peer(k)]), training=training) for k, d in enumerate(self.discriminators)
            ]
        return {}

    def compute_losses(self, outputs, labels):
        logits = outputs["logits"]
        terms = {f"ce_net{k}": cross_entropy(z, labels) for k, z in enumerate(logits)}
        if self.uses_kd:
            for k, z in enumerate(logits):
                terms[f"kd_net{k}"] = distillation_kl(z, logits[self.peer(k)], self.temperature)
        if self.adversarial:
            fake, real = outputs["d_fake"], outputs["d_real"]
            for k in range(len(logits)):
                terms[f"adv_g{k}"] = tf.square(1.0 - fake[k])
            for k in range(len(logits)):
                # The discriminator's gradient never reaches the networks: only its own
                # variables are updated from this term.
                terms[f"adv_d{k}"] = tf.square(1.0 - real[k]) + tf.square(fake[k])
        if self.uses_l1:
            maps = outputs["transferred"]
            for k in range(len(logits)):
                diff = tf.abs(maps[k] - tf.stop_gradient(maps[self.peer(k)]))
                terms[f"l1_net{k}"] = tf.reduce_mean(diff, axis=[1, 2, 3])
        return terms

    # ------------------------------------------------------------- variable groups
    def network_variables(self):
        return [v for b in self.branches for v in b.trainable_variables]

    def extractor_variables(self):
        """Variables the feature maps depend on (the networks minus their classifiers).

        Read off the functional graph: a model from each branch's input to its feature map
        holds exactly the layers on that path.  (A gradient probe would not work under
        MirroredStrategy, where the model is built in cross-replica context.)
        """
        found = []
        for branch in self.branches:
            extractor = keras.Model(branch.inputs, branch.outputs[1])
            found += extractor.trainable_variables
        return found

    def feature_variables(self):
        """What the feature optimiser updates: extractors, transfer layers, discriminators."""
        transfers = [v for t in self.transfers if t is not None for v in t.trainable_variables]
        discriminators = [v for d in self.discriminators for v in d.trainable_variables]
        extractors = [v for v in self.network_variables() if id(v) in self._extractor_ids]
        return extractors + transfers, discriminators

    def compile(self, optimizer=None, feature_optimizer=None, **kwargs):
        super().compile(optimizer=optimizer, **kwargs)
        if self.mode != "kd":
            if feature_optimizer is None:
                raise ValueError("AFD needs a feature_optimizer (Adam in the paper) unless mode='kd'")
            if self.dtype_policy.name == "mixed_float16":
                feature_optimizer = keras.optimizers.LossScaleOptimizer(feature_optimizer)
            self.feature_optimizer = feature_optimizer

    @property
    def optimizers(self):
        return [self.optimizer] + ([self.feature_optimizer] if self.feature_optimizer is not None else [])

    def build_optimizers(self):
        """Creates every optimiser variable now: MirroredStrategy fails on extra optimisers
        that build lazily inside the step (a cond/Placeholder InvalidArgumentError)."""
        self.optimizer.build(self.network_variables())
        if self.feature_optimizer is not None:
            extractors, discriminators = self.feature_variables()
            self.feature_optimizer.build(extractors + discriminators)

    # -------------------------------------------------------------------- the step
    def train_step(self, data):
        images, labels = data[0], data[1]
        network_vars = self.network_variables()
        extractor_vars, discriminator_vars = self.feature_variables()
        with tf.GradientTape(persistent=True) as tape:
            outputs = self.forward(images, training=True)
            terms = self.compute_losses(outputs, labels)
            self.check_terms(terms)
            logit_loss = self.weighted_sum({n: v for n, v in terms.items() if n.startswith(("ce_", "kd_"))})
            logit_loss = self.optimizer.scale_loss(logit_loss + self.l2_penalty([(self.weight_decay, network_vars)]))
            if self.feature_optimizer is not None:
                g_loss = self.weighted_sum(
                    {n: v for n, v in terms.items() if n.startswith(("adv_g", "l1_"))}
                ) + self.l2_penalty([(self.feature_weight_decay, extractor_vars)])
                g_loss = self.feature_optimizer.scale_loss(g_loss)
                if discriminator_vars:
                    d_loss = self.weighted_sum(
                        {n: v for n, v in terms.items() if n.startswith("adv_d")}
                    ) + self.l2_penalty([(self.feature_weight_decay, discriminator_vars)])
                    d_loss = self.feature_optimizer.scale_loss(d_loss)
        # Every gradient comes from the one forward pass above, before any update.
        logit_grads = tape.gradient(logit_loss, network_vars)
        if self.feature_optimizer is not None:
            feature_grads = tape.gradient(g_loss, extractor_vars)
            if discriminator_vars:
                feature_grads += tape.gradient(d_loss, discriminator_vars)
        del tape
        self.optimizer.apply(logit_grads, network_vars)
        if self.feature_optimizer is not None:
            self.feature_optimizer.apply(feature_grads, extractor_vars + discriminator_vars)
        return self.update_metrics(outputs, labels, terms)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "feature_weight_decay": self.feature_weight_decay, "sync_bn": self.sync_bn}


def afd_options(config):
    from keras_ffl.build import use_sync_bn

    return dict(mode=config.afd_mode, feature_weight_decay=config.feature_weight_decay, sync_bn=use_sync_bn(config))


def afd_feature_optimizer(config, steps_per_epoch):
    """Adam, lr 2e-5 x0.1 at epochs 75 and 150 (paper 003 Sec. 4)."""
    from keras_ffl.build import step_schedule

    schedule = step_schedule(config.feature_lr, config.feature_lr_milestones, config.lr_gamma, steps_per_epoch)
    return keras.optimizers.Adam(learning_rate=schedule)
