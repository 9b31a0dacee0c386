"""The JAX engine: a stateless training step that Keras's JAX trainer jits.

The trainer passes ``state = (trainable, non_trainable, optimizer, metrics)`` values and
keeps what the step returns; nothing is assigned to a variable inside the step.  For each
phase of the method's plan, the forward pass runs once under ``jax.vjp`` with every model
and optimiser variable mapped in a ``keras.StatelessScope`` (BatchNorm statistics come out
of the scope), and each declared loss is pulled back on its own from that one pass.  Each
update then runs its optimiser's ``stateless_apply`` on the values of its variables.

Every optimiser's state lives in ``model.optimizer.variables``, the only optimiser state
the trainer carries (through jit, donation, ``keras.distribution`` shardings, syncing back
and checkpoints): a method with several optimisers compiles an ``OptimizerGroup`` whose
``variables`` are its own plus every member's.  Under ``keras.distribution.DataParallel`` the
batch is sharded and every mean is over the global batch, so nothing here depends on the
number of devices.
"""

import jax
import jax.numpy as jnp
import keras
from keras import ops

from keras_ffl import keras_private
from keras_ffl.engines import PlanStep, gradient_loss, run_plan, unpack
from keras_ffl.engines import single_program

# The step sees the global batch in one program (the collectives the methods call).
all_gather, global_mean, cross_replica = (single_program.all_gather, single_program.global_mean,
                                          single_program.cross_replica)


def forward_losses(model, inputs, labels, pairs, variables, values, training=True):
    """Runs the forward pass with ``variables`` mapped to ``values`` and returns the declared
    losses (one per ``(update, gradient)`` pair), the non-trainable values after the pass, the
    outputs and the terms."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values))) as scope:
        outputs = model.forward(inputs, training=training)
        terms = model.compute_losses(outputs, labels)
        model.check_terms(terms)
        losses = [
            model.optimizer_for(update.optimizer).scale_loss(gradient_loss(model, gradient, terms, ops.mean))
            for update, gradient in pairs
        ]
    non_trainable = [scope.get_current_value(v) for v in model.non_trainable_variables]
    return losses, non_trainable, outputs, terms


def apply_update(optimizer, grads, variables, trainable, optimizer_values, t_index, o_index):
    """Steps ``optimizer`` statelessly on ``variables``; writes the new values into the
    ``trainable`` and ``optimizer_values`` lists (indexed by ``t_index``/``o_index``)."""
    own = optimizer.variables
    own_values = [optimizer_values[o_index[id(v)]] for v in own]
    built = keras_private.built_variables(optimizer)
    by_id = dict(zip(map(id, variables), grads))
    if set(by_id) == {id(v) for v in built}:
        new_trainable, new_own = optimizer.stateless_apply(
            own_values, [by_id[id(v)] for v in built], [trainable[t_index[id(v)]] for v in built])
        stepped = built
    else:
        # A subset of what the optimiser was built on (DML's sequential update): map all it
        # knows, apply to the subset.
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError("mixed_float16 loss scaling cannot step part of an optimiser's variables on JAX "
                             "(DML's sequential update): use float32 or mixed_bfloat16")
        mapping = [(v, trainable[t_index[id(v)]]) for v in built] + list(zip(own, own_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            optimizer.apply(grads, variables)
        new_trainable = [scope.get_current_value(v) for v in variables]
        new_own = [scope.get_current_value(v) for v in own]
        stepped = variables
    for v, value in zip(stepped, new_trainable):
        trainable[t_index[id(v)]] = value
    for v, value in zip(own, new_own):
        optimizer_values[o_index[id(v)]] = value


class StatelessStep(PlanStep):
    """Carries the trainer's state values through the plan: every gradient and update reads and
    writes these lists, never a variable."""

    def __init__(self, model, inputs, labels, trainable, non_trainable, optimizer_values):
        super().__init__(model, inputs, labels)
        self.trainable, self.non_trainable, self.optimizer_values = trainable, non_trainable, optimizer_values
        self.t_vars, self.nt_vars = model.trainable_variables, model.non_trainable_variables
        self.o_vars = model.optimizer.variables
        self.t_index = {id(v): i for i, v in enumerate(self.t_vars)}
        self.o_index = {id(v): i for i, v in enumerate(self.o_vars)}

    def gradients(self, pairs):
        mapped = list(self.t_vars) + list(self.nt_vars) + list(self.o_vars)
        non_trainable, optimizer_values = self.non_trainable, self.optimizer_values

        def forward(values):
            losses, new_non_trainable, outputs, terms = forward_losses(
                self.model, self.inputs, self.labels, pairs, mapped, list(values) + non_trainable + optimizer_values)
            return losses, (new_non_trainable, outputs, terms)

        losses, pull_back, (self.non_trainable, outputs, terms) = jax.vjp(forward, self.trainable, has_aux=True)
        zeros = [jnp.zeros_like(loss) for loss in losses]
        grads = []
        for i, (_, gradient) in enumerate(pairs):
            (all_grads,) = pull_back(zeros[:i] + [jnp.ones_like(losses[i])] + zeros[i + 1:])
            grads.append([all_grads[self.t_index[id(v)]] for v in gradient.variables])
        return grads, outputs, terms

    def apply(self, optimizer, grads, variables):
        apply_update(optimizer, grads, variables, self.trainable, self.optimizer_values, self.t_index, self.o_index)

    def count(self, optimizer, delta):
        position = self.o_index[id(keras_private.iterations_variable(optimizer))]
        self.optimizer_values[position] = self.optimizer_values[position] + delta


def train_step(model, state, data):
    trainable, non_trainable, optimizer_values, metrics_values = (list(s) for s in state)
    inputs, labels = unpack(data)
    step = StatelessStep(model, inputs, labels, trainable, non_trainable, optimizer_values)
    outputs, terms = run_plan(model, step)
    t_vars, nt_vars = step.t_vars, step.nt_vars
    # after_step may move Keras-trainable variables too (PCL's temporal mean, which no optimiser
    # touches): read back every variable it may have assigned, not only the non-trainable ones.
    mapping = list(zip(t_vars, step.trainable)) + list(zip(nt_vars, step.non_trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        model.after_step(outputs)
    trainable = [scope.get_current_value(v) for v in t_vars]
    non_trainable = [scope.get_current_value(v) for v in nt_vars]
    logs, metrics_values = report(model, outputs, labels, terms, non_trainable, metrics_values)
    return logs, (trainable, non_trainable, step.optimizer_values, metrics_values)


def test_step(model, state, data):
    trainable, non_trainable, metrics_values = state
    inputs, labels = unpack(data)
    mapping = list(zip(model.trainable_variables, trainable)) + list(zip(model.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping):
        outputs = model.forward(inputs, training=False)
        terms = model.compute_losses(outputs, labels)
    logs, metrics_values = report(model, outputs, labels, terms, non_trainable, metrics_values)
    return logs, (trainable, non_trainable, metrics_values)


def report(model, outputs, labels, terms, non_trainable, metrics_values):
    """Updates the metric trackers statelessly (the ramp-up reads the epoch variable)."""
    metric_vars = model.metrics_variables
    mapping = list(zip(metric_vars, metrics_values)) + list(zip(model.non_trainable_variables, non_trainable))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = model.update_metrics(outputs, labels, terms)
    return logs, [scope.get_current_value(v) for v in metric_vars]
