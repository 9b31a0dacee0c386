"""What every online-distillation method shares, written once in ``keras.ops``.

A method is a ``keras.Model`` that receives already-built sub-networks: an optional shared
``trunk`` and ``branches`` (each a model returning ``[logits, feature_map]``).  It never names
an architecture, so any ``keras.Model`` with that output contract can take part.

A subclass declares only what is its own:

* ``loss_term_names()``: the stable names of its loss terms (``ce_net0``, ``kd_fused``...);
* ``compute_losses(outputs, labels)``: a dict of *per-example* losses under those names;
* optionally ``build_teachers(outputs, training)`` (extra logits it reports, ``fused``...),
  ``weight_decay_groups()`` (variables that decay at another rate), ``term_weights`` (a
  constant factor per term) and ``update_plan()``: which terms train which variables with
  which optimiser, when that is not "every term, every variable, one optimiser".

The base class owns the rest: the forward pass, the ramp-up of every ``kd_*`` term (it
follows the epoch by itself through ``fit``), PyTorch-style coupled L2 weight decay, metric
trackers, the eval heads, standalone parts (``subnetwork(k)``, ``part("fused")``) and
serialization.  The engine of the running backend (``keras_ffl.engines``) turns the
declared plan into ``train_step``: GradientTape and tf.distribute on TensorFlow, a stateless
jitted step on JAX.  Methods never import a backend.

Every variable exists when the constructor returns (the fusion module, gates and
discriminators included), so ``compile`` builds the optimiser on all of them and ``fit``
needs no call before it.
"""

import functools
import inspect
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_ffl import engines, keras_private
from keras_ffl.callbacks import ConciseProgbar, EpochVariable
from keras_ffl.losses import as_float, rampup_weight
from keras_ffl.optimizers import OptimizerGroup

#: Loss terms whose name starts with this prefix are multiplied by the ramp-up weight.
RAMPED_PREFIX = "kd_"


class Gradient(NamedTuple):
    """One loss differentiated with respect to some variables.

    The loss is the weighted sum of ``terms`` (``kd_*`` ones ramped) plus the coupled L2
    penalty ``0.5 * rate * ||w||^2`` of each ``(rate, variables)`` in ``decay``.
    """

    terms: tuple
    variables: list
    decay: tuple = ()


class Update(NamedTuple):
    """One optimiser step: the optimiser of role ``optimizer`` (``"optimizer"`` is the model's
    own) applied once to the gradients of ``gradients``, whose variables are disjoint."""

    optimizer: str
    gradients: tuple


def serialize_model(model):
    return keras.saving.serialize_keras_object(model) if model is not None else None


def deserialize_model(config):
    return keras.saving.deserialize_keras_object(config) if config is not None else None


class OnlineDistiller(keras_private.SkipsBuiltSymbolicBuild, keras.Model):
    """Base class of every method; see the module docstring for the contract."""

    #: Names of the logits a method adds beside its sub-networks and their ensemble.
    teacher_names = ()
    #: Its name in ``keras_ffl.methods.registry``: its declaration (``<name>_options.py``) holds
    #: its topologies, branch limits, default temperature and ramp-up, and its settings'
    #: defaults and choices.
    method_name = None

    @classmethod
    def declaration(cls):
        """The method's registered options class (``keras_ffl.methods.<name>_options``)."""
        from keras_ffl.methods import registry

        return registry.get(cls.method_name)

    @property
    def independent_only(self):
        """Its networks must not share a trunk (its config then carries none)."""
        return "shared" not in self.declaration().TOPOLOGIES

    @property
    def needs_trunk(self):
        """It needs a shared trunk with branches of one architecture."""
        return "independent" not in self.declaration().TOPOLOGIES

    @property
    def min_branches(self):
        """The fewest sub-networks the method makes sense with (under its settings)."""
        return self.declaration().MIN_BRANCHES

    def __init_subclass__(cls, **kwargs):
        """Wraps each subclass's ``__init__`` so that the model is built (every variable
        created) once the outermost constructor has returned."""
        super().__init_subclass__(**kwargs)
        init = cls.__init__  # its own, or the (already wrapped) inherited one

        @functools.wraps(init)
        def init_then_build(self, *args, **kw):
            outermost = not getattr(self, "_keras_ffl_constructing", False)
            object.__setattr__(self, "_keras_ffl_constructing", True)
            try:
                init(self, *args, **kw)
            finally:
                if outermost:
                    object.__setattr__(self, "_keras_ffl_constructing", False)
            if outermost:
                self._build_now()

        cls.__init__ = init_then_build

    def __init__(
        self,
        branches,
        num_classes=None,
        trunk=None,
        temperature=None,
        rampup_epochs=None,
        weight_decay=1e-4,
        **kwargs,
    ):
        super().__init__(**kwargs)
        default_temperature, default_rampup = self.distillation_defaults()
        name = type(self).__name__
        branches = list(branches)
        if self.independent_only and trunk is not None:
            raise ValueError(f"{name} trains independent networks: build them without a shared trunk")
        if self.needs_trunk and trunk is None:
            raise ValueError(f"{name} needs a shared trunk with branches of one architecture")
        if len(branches) < self.min_branches:
            raise ValueError(f"{name} needs at least {self.min_branches} sub-networks, got {len(branches)}")
        for k, branch in enumerate(branches):
            if not isinstance(branch, keras.Model) or len(branch.outputs or ()) < 2:
                raise ValueError(f"sub-network {k} must be a keras.Model returning [logits, feature_map]")
        inferred = branches[0].outputs[0].shape[-1]
        self.num_classes = int(num_classes if num_classes is not None else inferred)
        if inferred is not None and inferred != self.num_classes:
            raise ValueError(f"num_classes={self.num_classes}, but sub-network 0 returns {inferred} logits")
        self.trunk = trunk
        self.branches = branches
        self.temperature = float(default_temperature if temperature is None else temperature)
        self.rampup_epochs = int(default_rampup if rampup_epochs is None else rampup_epochs)
        self.weight_decay = float(weight_decay)
        # A variable, so the compiled step reads the current epoch; ``fit`` sets it at the start
        # of every epoch (``EpochVariable``, added by ``fit`` itself).
        self.epoch = keras.Variable(0.0, trainable=False, dtype="float32", name="epoch")
        self.term_weights = {}

    def distillation_defaults(self):
        """``(temperature, rampup_epochs)`` when the constructor is given none: the method's
        paper or code, the same numbers the command line uses (its declaration)."""
        return self.declaration()().distillation_defaults()

    def _build_now(self):
        """Creates every variable with one inference pass on a dummy batch."""
        self.part_names = [f"net{k}" for k in range(len(self.branches))] + ["ensemble", *self.teacher_names]
        self.term_names = list(self.loss_term_names())
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in ["loss", *self.term_names]}
        self.top1 = {p: keras.metrics.SparseCategoricalAccuracy(name=f"acc_{p}") for p in self.part_names}
        self.top5 = (
            {p: keras.metrics.SparseTopKCategoricalAccuracy(k=5, name=f"top5_{p}") for p in self.part_names}
            if self.num_classes > 10
            else {}
        )
        self(self.example_inputs(1), training=False)

    @property
    def image_shape(self):
        first = self.trunk if self.trunk is not None else self.branches[0]
        return tuple(first.inputs[0].shape[1:])

    def example_images(self, batch_size):
        return np.zeros((batch_size, *self.image_shape), dtype="float32")

    def example_inputs(self, batch_size):
        """A dummy input batch (what ``call`` takes in training)."""
        return self.example_images(batch_size)

    def build(self, input_shape=None):
        # Built in the constructor; Keras's loader calls this with the saved input shape.
        self.built = True

    def get_build_config(self):
        return {"input_shape": (None, *self.image_shape)}

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

    def optimizer_roles(self):
        """``{role: variables}``: what each optimiser is built on.  One optimiser over every
        trainable variable unless a method says otherwise (AFD)."""
        return {"optimizer": self.trainable_variables}

    def update_plan(self):
        """Phases of updates; each phase is one forward pass, then every update of it (all of
        its gradients are taken before any is applied).  Default: one phase, one update of
        every term on every trainable variable with the model's optimiser."""
        gradient = Gradient(tuple(self.term_names), self.trainable_variables, tuple(self.weight_decay_groups()))
        return [[Update("optimizer", (gradient,))]]

    # ---------------------------------------------------------------- forward pass
    def split_inputs(self, inputs):
        """``(images, extras)``: methods that take more than images (example indices, several
        views) receive a dict; the images are what sub-networks see."""
        if isinstance(inputs, dict):
            return inputs["images"], {k: v for k, v in inputs.items() if k != "images"}
        return inputs, {}

    def branch_inputs(self, images, extras, training):
        """``(shared, [what branch k sees])``: the trunk's output, given to every branch.
        Methods with another topology (hierarchical sharing, one augmented view per network)
        override this; ``subnetwork`` follows it too."""
        shared = self.trunk(images, training=training) if self.trunk is not None else images
        return shared, [shared] * len(self.branches)

    def forward(self, inputs, training=False):
        """Everything a loss may need: per-net logits and feature maps, ensemble, teachers."""
        images, extras = self.split_inputs(inputs)
        shared, branch_inputs = self.branch_inputs(images, extras, training)
        logits, features, taps = [], [], []
        for branch, x in zip(self.forward_branches(), branch_inputs):
            z, f, *extra = branch(x, training=training)
            logits.append(as_float(z))
            features.append(f)
            taps.append(extra)
        outputs = {
            "images": images,
            "extras": extras,
            "shared": shared,
            "logits": logits,
            "features": features,
            "taps": taps,
            "ensemble": ops.mean(ops.stack(logits, axis=0), axis=0),
        }
        outputs["teachers"] = {k: as_float(v) for k, v in self.build_teachers(outputs, training).items()}
        return outputs

    def call(self, inputs, training=False):
        return self.named_logits(self.forward(inputs, training=training))

    def named_logits(self, outputs):
        named = {f"net{k}": z for k, z in enumerate(outputs["logits"])}
        named["ensemble"] = outputs["ensemble"]
        named.update(outputs["teachers"])
        return named

    # --------------------------------------------------------------- standalone parts
    def subnetwork(self, index):
        """Sub-network ``index`` as a standalone functional model, images -> logits, holding only
        its own weights (the shared trunk and branch ``index``)."""
        if not 0 <= index < len(self.branches):
            raise ValueError(f"{self.name} has sub-networks 0..{len(self.branches) - 1}, not {index}")
        inputs = keras.Input(shape=self.image_shape, name="images")
        _, branch_inputs = self.branch_inputs(inputs, {}, False)
        logits = self.branches[index](branch_inputs[index])[0]
        return self.standalone(keras.Model(inputs, logits, name=f"net{index}"))

    def standalone(self, model):
        """A part model, called once so that Keras's ``export`` takes it as it is."""
        model(self.example_images(1))
        return model

    def part(self, name):
        """Any part in ``part_names`` as a standalone model, images -> logits: ``net{k}`` holds
        only its own weights; ``ensemble`` and the teachers (``fused``...) hold what they need."""
        if name not in self.part_names:
            raise ValueError(f"no part '{name}' in this {self.name} model: choose from {', '.join(self.part_names)}")
        digits = "".join(c for c in name if c.isdigit())
        if name == f"net{digits}":
            return self.subnetwork(int(digits))
        own = self.standalone_part(name)
        if own is not None:
            return self.standalone(own)
        inputs = keras.Input(shape=self.image_shape, name="images")
        return self.standalone(keras.Model(inputs, self(inputs)[name], name=name))

    def standalone_part(self, name):
        """A method's own smaller model for one of its parts (FFCL's frozen copies), or None."""
        return None

    def after_step(self, outputs):
        """State a method updates after its optimisers' step, outside any gradient (PCL's
        temporal mean, MCL-OKD's memory banks): assign to its variables here."""

    # --------------------------------------------------------------- loss plumbing
    def rampup(self):
        return rampup_weight(self.epoch, self.rampup_epochs, dtype=self.loss_dtype)

    @property
    def loss_dtype(self):
        """The precision of the losses: float32, or float64 in a float64 reference run."""
        return "float64" if self.dtype_policy.compute_dtype == "float64" else "float32"

    def term_weight(self, name):
        weight = self.term_weights.get(name, 1.0)
        return weight * self.rampup() if name.startswith(RAMPED_PREFIX) else weight

    def check_terms(self, terms):
        if list(terms) != self.term_names:
            raise ValueError(f"{type(self).__name__}.compute_losses returned {list(terms)}, declared {self.term_names}")

    def weighted_sum(self, terms, reduce=ops.mean):
        """Sum of ``reduce``d terms, each times its weight (``kd_*`` ones ramped)."""
        values = [ops.multiply(self.term_weight(n), reduce(v)) for n, v in terms.items()]
        return sum(values[1:], values[0])

    def total_loss(self, terms):
        """The loss over all declared terms (mean over the batch, without weight decay)."""
        self.check_terms(terms)
        return self.weighted_sum(terms)

    @staticmethod
    def l2_penalty(groups):
        """PyTorch-style coupled L2: ``sum 0.5 * rate * ||w||^2``, whose gradient is ``rate * w``."""
        penalty = 0.0
        for decay, variables in groups:
            if decay > 0 and variables:
                squares = [ops.sum(ops.square(as_float(v))) for v in variables]
                penalty = penalty + decay * 0.5 * sum(squares[1:], squares[0])
        return penalty

    # --------------------------------------------------------------------- metrics
    @property
    def metrics(self):
        return [*self.loss_trackers.values(), *self.top1.values(), *self.top5.values()]

    def update_metrics(self, outputs, labels, terms):
        for part, logits in self.named_logits(outputs).items():
            self.top1[part].update_state(labels, logits)
            if part in self.top5:  # TensorFlow's in_top_k takes float32 only (a float64 run)
                self.top5[part].update_state(labels, ops.cast(logits, "float32"))
        for name, values in terms.items():
            self.loss_trackers[name].update_state(ops.mean(values))
        self.loss_trackers["loss"].update_state(self.weighted_sum(terms))
        return {m.name: m.result() for m in self.metrics}

    # ------------------------------------------------------------ compile and fit
    def compile(self, optimizer="sgd", loss=None, metrics=None, **kwargs):
        """Keras's ``compile``; the method computes its own losses and reports the top-1 (and
        top-5) of every part, so ``loss`` and ``metrics`` are not taken.  The optimiser is
        built on the model's variables here, so a checkpoint can be loaded before ``fit``."""
        if loss is not None or metrics is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own loss terms and reports every part's accuracy: "
                "compile it without loss= and metrics="
            )
        if isinstance(optimizer, OptimizerGroup):
            kwargs["auto_scale_loss"] = False  # each member is wrapped on its own
        super().compile(optimizer=optimizer, **kwargs)
        self.build_optimizers()

    def build_optimizers(self):
        """Creates every optimiser variable now: restored checkpoints and MirroredStrategy both
        need them before ``fit``."""
        roles = self.optimizer_roles()
        if isinstance(self.optimizer, OptimizerGroup):
            self.optimizer.build([])
            for role, optimizer in self.optimizer.members.items():
                if not optimizer.built:
                    optimizer.build(roles[role])
        elif not self.optimizer.built:
            self.optimizer.build(roles["optimizer"])

    def optimizer_for(self, role):
        if isinstance(self.optimizer, OptimizerGroup):
            return self.optimizer.members[role]
        return self.optimizer

    @property
    def optimizers(self):
        """Every optimiser the method steps (members of a group included)."""
        if isinstance(self.optimizer, OptimizerGroup):
            return list(self.optimizer.members.values())
        return [self.optimizer] if self.optimizer is not None else []

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)

    def fit(self, *args, **kwargs):
        """Keras's ``fit``, with the callback that moves the ramp-up from epoch to epoch, and a
        progress bar showing the total loss and each part's top-1 accuracy (``ConciseProgbar``:
        one line per epoch with ``verbose=2`` or off a terminal; every loss term is still in the
        History and any logger) unless a ProgbarLogger is given."""
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        callbacks = bound.arguments.get("callbacks")
        if isinstance(callbacks, keras.callbacks.CallbackList):
            if not any(isinstance(c, EpochVariable) for c in callbacks.callbacks):
                callbacks.append(EpochVariable())
        else:
            callbacks = list(callbacks or [])
            if not any(isinstance(c, EpochVariable) for c in callbacks):
                callbacks.insert(0, EpochVariable())
            verbose = bound.arguments.get("verbose", "auto")
            if verbose != 0 and not any(isinstance(c, keras.callbacks.ProgbarLogger) for c in callbacks):
                callbacks.append(ConciseProgbar(terminal=False) if verbose == 2 else ConciseProgbar())
            bound.arguments["callbacks"] = callbacks
        arguments = dict(bound.arguments)
        arguments.pop("self")
        return super().fit(**arguments)

    # ------------------------------------------------------------ the step, per backend
    def train_step(self, *args):
        return engines.current().train_step(self, *args)

    def test_step(self, *args):
        return engines.current().test_step(self, *args)

    # --------------------------------------------------------------- serialization
    def get_config(self):
        config = {
            "name": self.name,
            "num_classes": self.num_classes,
            "temperature": self.temperature,
            "rampup_epochs": self.rampup_epochs,
            "weight_decay": self.weight_decay,
            "branches": [serialize_model(b) for b in self.branches],
        }
        if not self.independent_only:
            config["trunk"] = serialize_model(self.trunk)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["branches"] = [deserialize_model(b) for b in config["branches"]]
        if "trunk" in config:
            config["trunk"] = deserialize_model(config["trunk"])
        for key in cls.nested_model_keys():
            config[key] = deserialize_model(config.get(key))
        return cls(**config)

    @classmethod
    def nested_model_keys(cls):
        """Config keys (besides branches and trunk) that hold serialized Keras models."""
        return ()
