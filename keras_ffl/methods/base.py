"""What every online-distillation method shares.

A method is a ``keras.Model`` that receives already-built sub-networks: an optional
shared ``trunk`` and ``branches`` (each a model returning ``[logits, feature_map]``).
It never names an architecture, so any ``keras.Model`` with that output contract can
take part ("bring your own").

A subclass implements only what is its own:

* ``loss_term_names()``: the stable names of its loss terms (``ce_net0``, ``kd_fused``...);
* ``compute_losses(outputs, labels)``: a dict of *per-example* losses under those names;
* optionally ``build_teachers(outputs, training)``: extra logits it reports (``fused``...)
  and ``weight_decay_groups()`` when some variables decay differently.

The base class owns the rest: the forward pass, the ramp-up of every ``kd_*`` term,
the replica-aware reduction (each term is a mean over the *global* batch, exactly as
Keras's built-in losses are under ``tf.distribute``), PyTorch-style coupled L2 weight
decay, loss scaling for mixed precision, metric trackers and the eval heads.
"""

import keras
import tensorflow as tf
from keras import ops

from keras_ffl.losses import rampup_weight

#: Loss terms whose name starts with this prefix are multiplied by the ramp-up weight.
RAMPED_PREFIX = "kd_"


def in_multi_worker_mode():
    strategy = tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


class OnlineDistiller(keras.Model):
    """Base class of every method; see the module docstring for the contract."""

    #: Names of the logits a method adds beside its sub-networks and their ensemble.
    teacher_names = ()
    #: Methods whose networks must not share a trunk (their config then carries none).
    independent_only = False

    def __init__(
        self,
        branches,
        num_classes,
        trunk=None,
        temperature=3.0,
        rampup_epochs=80,
        weight_decay=1e-4,
        min_branches=2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if self.independent_only and trunk is not None:
            raise ValueError(f"{type(self).__name__} trains independent networks: build them without a shared trunk")
        if len(branches) < min_branches:
            raise ValueError(f"{type(self).__name__} needs at least {min_branches} sub-networks, got {len(branches)}")
        self.trunk = trunk
        self.branches = list(branches)
        self.num_classes = int(num_classes)
        self.temperature = float(temperature)
        self.rampup_epochs = int(rampup_epochs)
        self.weight_decay = float(weight_decay)
        # Kept as a variable so the compiled step reads the current epoch; the
        # EpochVariable callback sets it at the start of every epoch.
        self.epoch = keras.Variable(0.0, trainable=False, dtype="float32", name="epoch")

        self.part_names = [f"net{k}" for k in range(len(self.branches))] + ["ensemble", *self.teacher_names]
        self.term_names = list(self.loss_term_names())
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in ["loss", *self.term_names]}
        self.top1 = {p: keras.metrics.SparseCategoricalAccuracy(name=f"acc_{p}") for p in self.part_names}
        self.top5 = (
            {p: keras.metrics.SparseTopKCategoricalAccuracy(k=5, name=f"top5_{p}") for p in self.part_names}
            if self.num_classes > 10
            else {}
        )

    @property
    def num_branches(self):
        return len(self.branches)

    # ----------------------------------------------------------------- subclass API
    def loss_term_names(self):
        raise NotImplementedError

    def compute_losses(self, outputs, labels):
        """Returns ``{term_name: per-example loss [batch]}``; ``kd_*`` terms get ramped."""
        raise NotImplementedError

    def build_teachers(self, outputs, training):
        """Returns ``{teacher_name: logits}`` for the names in ``teacher_names``."""
        return {}

    def build_optimizers(self):
        """Creates the optimiser's variables now (see ``keras_ffl.build.compile_model``)."""
        self.optimizer.build(self.trainable_variables)

    @property
    def optimizers(self):
        """Every optimiser the method steps; checkpoints hold all of their states."""
        return [self.optimizer]

    def forward_branches(self):
        """The models ``forward`` runs: ``branches`` by default.  A method that needs more of a
        network (FFCL's middle layer) returns models sharing the branches' layers whose extra
        outputs land in ``outputs["taps"]``."""
        return self.branches

    def weight_decay_groups(self):
        """``[(decay, variables), ...]``; by default every trainable variable decays alike."""
        return [(self.weight_decay, self.trainable_variables)]

    def decay_apart(self, module, decay):
        """Decay groups where ``module``'s variables decay at ``decay`` and the rest at
        ``weight_decay`` (the FFL and FFCL fusion modules)."""
        own = {id(v) for v in module.trainable_variables}
        rest = [v for v in self.trainable_variables if id(v) not in own]
        return [(self.weight_decay, rest), (decay, module.trainable_variables)]

    # ---------------------------------------------------------------- forward pass
    def forward(self, images, training=False):
        """Everything a loss may need: per-net logits and feature maps, ensemble, teachers."""
        shared = self.trunk(images, training=training) if self.trunk is not None else images
        logits, features, taps = [], [], []
        for branch in self.forward_branches():
            z, f, *extra = branch(shared, training=training)
            logits.append(ops.cast(z, "float32"))
            features.append(f)
            taps.append(extra)
        outputs = {
            "images": images,
            "shared": shared,
            "logits": logits,
            "features": features,
            "taps": taps,
            "ensemble": ops.mean(ops.stack(logits, axis=0), axis=0),
        }
        outputs["teachers"] = {k: ops.cast(v, "float32") for k, v in self.build_teachers(outputs, training).items()}
        return outputs

    def call(self, images, training=False):
        outputs = self.forward(images, training=training)
        named = {f"net{k}": z for k, z in enumerate(outputs["logits"])}
        named["ensemble"] = outputs["ensemble"]
        named.update(outputs["teachers"])
        return named

    def subnetwork(self, index):
        """A standalone functional model for sub-network ``index``: images -> logits."""
        branch = self.branches[index]
        inputs = keras.Input(shape=self.trunk.input_shape[1:] if self.trunk is not None else branch.input_shape[1:])
        x = self.trunk(inputs) if self.trunk is not None else inputs
        logits, _ = branch(x)
        return keras.Model(inputs, logits, name=f"net{index}")

    # --------------------------------------------------------------- loss plumbing
    def rampup(self):
        return rampup_weight(tf.convert_to_tensor(self.epoch), self.rampup_epochs)

    def term_weight(self, name):
        return self.rampup() if name.startswith(RAMPED_PREFIX) else 1.0

    def check_terms(self, terms):
        if list(terms) != self.term_names:
            raise ValueError(f"{type(self).__name__}.compute_losses returned {list(terms)}, declared {self.term_names}")

    def weighted_sum(self, terms, reduce=tf.nn.compute_average_loss):
        """Sum of ``reduce``d terms, ``kd_*`` ones ramped.  The default reduction is the mean
        over the global batch (replica-aware); ``ops.mean`` gives the per-replica value."""
        return tf.add_n([self.term_weight(n) * reduce(v) for n, v in terms.items()])

    def total_loss(self, terms):
        """The training loss of all declared terms (replica-aware)."""
        self.check_terms(terms)
        return self.weighted_sum(terms)

    def l2_penalty(self, groups=None):
        """PyTorch-style coupled L2: gradient wd * w, split across replicas since they sum."""
        penalties = [
            decay * 0.5 * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables])
            for decay, variables in (groups if groups is not None else self.weight_decay_groups())
            if decay > 0 and variables
        ]
        if not penalties:
            return tf.constant(0.0)
        return tf.add_n(penalties) / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)

    @staticmethod
    def apply_scaled_loss(tape, scaled_loss, optimizer, variables):
        """Differentiates a loss already scaled *inside* the tape by ``optimizer.scale_loss``
        (a no-op except under mixed_float16) and applies the update on ``variables``."""
        optimizer.apply(tape.gradient(scaled_loss, variables), variables)

    # --------------------------------------------------------------------- metrics
    @property
    def metrics(self):
        return [*self.loss_trackers.values(), *self.top1.values(), *self.top5.values()]

    def update_metrics(self, outputs, labels, terms):
        named = {f"net{k}": z for k, z in enumerate(outputs["logits"])}
        named["ensemble"] = outputs["ensemble"]
        named.update(outputs["teachers"])
        for part, logits in named.items():
            self.top1[part].update_state(labels, logits)
            if part in self.top5:
                self.top5[part].update_state(labels, logits)
        for name, values in terms.items():
            self.loss_trackers[name].update_state(ops.mean(values))
        self.loss_trackers["loss"].update_state(self.weighted_sum(terms, reduce=ops.mean))
        results = {m.name: m.result() for m in self.metrics}
        if in_multi_worker_mode():
            # Keras averages step results across workers with strategy.reduce(MEAN, axis=0),
            # which needs an axis: a scalar fails ("Invalid reduction dimension 0").
            results = {name: ops.reshape(value, [1]) for name, value in results.items()}
        return results

    # ------------------------------------------------------------------ fit hooks
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras 3's TF trainer builds a distributed model at the start of ``fit`` from a first
        batch it averages with ``strategy.reduce``, which MultiWorkerMirroredStrategy cannot do
        eagerly on per-replica values (keras-team/keras#20585: "unsupported type PerReplica").
        Everything it would build already exists here (``build_model`` calls the model and
        ``compile_model`` builds the optimisers; the losses and metrics are the method's own),
        so it is skipped then, which also spares pulling and discarding a first batch."""
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        images, labels = data[0], data[1]
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.forward(images, training=True)
            terms = self.compute_losses(outputs, labels)
            loss = self.optimizer.scale_loss(self.total_loss(terms) + self.l2_penalty())
        self.apply_scaled_loss(tape, loss, self.optimizer, variables)
        return self.update_metrics(outputs, labels, terms)

    def test_step(self, data):
        images, labels = data[0], data[1]
        outputs = self.forward(images, training=False)
        return self.update_metrics(outputs, labels, self.compute_losses(outputs, labels))

    def get_config(self):
        config = {
            "name": self.name,
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "rampup_epochs": self.rampup_epochs,
            "weight_decay": self.weight_decay,
            "trunk": keras.saving.serialize_keras_object(self.trunk) if self.trunk is not None else None,
            "branches": [keras.saving.serialize_keras_object(b) for b in self.branches],
        }
        if self.independent_only:
            del config["trunk"]
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["branches"] = [keras.saving.deserialize_keras_object(b) for b in config["branches"]]
        if config.get("trunk") is not None:
            config["trunk"] = keras.saving.deserialize_keras_object(config["trunk"])
        return cls(**config)
