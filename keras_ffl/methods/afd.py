"""AFD: online Adversarial Feature map Distillation (Chung et al., ICML 2020; paper 003).

K networks of any architectures, each split into a feature extractor G_k (up to its last
feature map) and a classifier.  Network k learns from its peer p = k-1 (cyclically; for
K = 2 the two learn from each other):

    logit loss (SGD):     CE(z_k) + kl(z_k <- z_p)                        (T = 3)
    feature loss (Adam):  L_Gk = (1 - D_k(T_k(G_k(x))))^2                 (LSGAN)
    discriminator (Adam): L_Dk = (1 - D_k(T_p(G_p(x))))^2 + D_k(T_k(G_k(x)))^2

D_k sees the peer's map as real and its own as fake.  T_k is a conv-BN-ReLU transfer
layer to the smallest channel count, present only where a network's count differs.

One forward pass, two updates (``update_plan``): the ``networks`` optimiser (SGD) applies the
logit loss to the networks; one step of the ``features`` optimiser (Adam) applies L_G to the
feature extractors (and transfer layers) and L_D to the discriminators.  The discriminators
see detached maps, and L_G's gradient is applied to the extractors only, so neither side
receives the other's gradients.  ``compile(optimizer=SGD, feature_optimizer=Adam)`` holds both
in one ``OptimizerGroup``, so checkpoints carry both states on every backend;
``feature_optimizer`` defaults to the paper's Adam (lr 2e-5; the paper's x0.1 steps at epochs
75 and 150 are what the command line's schedule adds).

Modes (paper Tables 1-2): ``full``, ``adversarial`` (no KL), ``kd`` (no adversarial, one
optimiser), ``l1`` and ``l1_kd`` (direct L1 alignment of the transferred maps to the
detached peer map, optimised like the adversarial term, instead of discriminators).
"""

import keras
from keras import ops

from keras_ffl.layers.adversarial import Discriminator, TransferLayer
from keras_ffl.losses import as_float, cross_entropy, distillation_kl, squared_error_to
from keras_ffl.methods.afd_options import AFD_MODES, AFDOptions
from keras_ffl.methods.base import Gradient, OnlineDistiller, Update
from keras_ffl.optimizers import OptimizerGroup

DEFAULTS = AFDOptions()


@keras.saving.register_keras_serializable(package="keras_ffl")
class AFD(OnlineDistiller):
    method_name = "afd"

    def __init__(self, branches, num_classes=None, trunk=None, mode=DEFAULTS.mode, feature_weight_decay=DEFAULTS.feature_weight_decay, sync_bn=False,
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
            as_float(t(f, training=training) if t is not None else f)
            for t, f in zip(self.transfers, outputs["features"])
        ]

    def build_teachers(self, outputs, training):
        if self.adversarial or self.uses_l1:
            outputs["transferred"] = self.transferred(outputs, training)
        if self.adversarial:
            maps = outputs["transferred"]
            outputs["d_fake"] = [d(m, training=training) for d, m in zip(self.discriminators, maps)]
            outputs["d_real"] = [
                d(ops.stop_gradient(maps[self.peer(k)]), training=training) for k, d in enumerate(self.discriminators)
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
                terms[f"adv_g{k}"] = squared_error_to(1.0, fake[k])
            for k in range(len(logits)):
                # Only the discriminators' own variables are updated from this term.
                terms[f"adv_d{k}"] = squared_error_to(1.0, real[k]) + squared_error_to(0.0, fake[k])
        if self.uses_l1:
            maps = outputs["transferred"]
            for k in range(len(logits)):
                diff = ops.abs(maps[k] - ops.stop_gradient(maps[self.peer(k)]))
                terms[f"l1_net{k}"] = ops.mean(diff, axis=(1, 2, 3))
        return terms

    # ------------------------------------------------------------- variable groups
    def network_variables(self):
        return [v for b in self.branches for v in b.trainable_variables]

    def extractor_variables(self):
        """Variables the feature maps depend on (the networks minus their classifiers), read off
        the functional graph: a model from each branch's input to its feature map holds exactly
        the layers on that path."""
        found = []
        for branch in self.branches:
            found += keras.Model(branch.inputs, branch.outputs[1]).trainable_variables
        return found

    def feature_variables(self):
        """What the feature optimiser updates: ``(extractors + transfer layers, discriminators)``."""
        transfers = [v for t in self.transfers if t is not None for v in t.trainable_variables]
        discriminators = [v for d in self.discriminators for v in d.trainable_variables]
        extractors = [v for v in self.network_variables() if id(v) in self._extractor_ids]
        return extractors + transfers, discriminators

    def optimizer_roles(self):
        if not isinstance(self.optimizer, OptimizerGroup):
            return {"optimizer": self.network_variables()}
        extractors, discriminators = self.feature_variables()
        return {"networks": self.network_variables(), "features": extractors + discriminators}

    def update_plan(self):
        networks = self.network_variables()
        logit_terms = tuple(n for n in self.term_names if n.startswith(("ce_", "kd_")))
        updates = [Update("networks", (Gradient(logit_terms, networks, ((self.weight_decay, networks),)),))]
        if self.mode != "kd":
            extractors, discriminators = self.feature_variables()
            decay = self.feature_weight_decay
            generator_terms = tuple(n for n in self.term_names if n.startswith(("adv_g", "l1_")))
            gradients = [Gradient(generator_terms, extractors, ((decay, extractors),))]
            if discriminators:
                critic_terms = tuple(n for n in self.term_names if n.startswith("adv_d"))
                gradients.append(Gradient(critic_terms, discriminators, ((decay, discriminators),)))
            updates.append(Update("features", tuple(gradients)))
        return [updates]

    def compile(self, optimizer="sgd", feature_optimizer=None, **kwargs):
        """``optimizer`` trains the networks on the logit loss; ``feature_optimizer`` (default:
        the paper's Adam, lr 2e-5) the extractors and discriminators on the feature losses."""
        if not isinstance(optimizer, OptimizerGroup) and self.mode != "kd":
            members = {"networks": keras.optimizers.get(optimizer),
                       "features": feature_optimizer or keras.optimizers.Adam(DEFAULTS.feature_lr)}
            if self.dtype_policy.name == "mixed_float16":
                members = {role: keras.optimizers.LossScaleOptimizer(o) for role, o in members.items()}
            optimizer = OptimizerGroup(members)
        elif feature_optimizer is not None:
            raise ValueError("AFD in mode 'kd' has no feature optimiser")
        super().compile(optimizer=optimizer, **kwargs)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "feature_weight_decay": self.feature_weight_decay,
                "sync_bn": self.sync_bn}
