"""The TensorFlow engine: GradientTape, tf.distribute and loss scaling.

Each term is reduced with ``tf.nn.compute_average_loss`` (a mean over the *global* batch, as
Keras's built-in losses are under ``tf.distribute``); the optimiser sums gradients across
replicas, so the weight-decay penalty is divided by the replica count to give exactly
``rate * w`` after the sum.  Losses are scaled inside the tape by their optimiser
(``LossScaleOptimizer`` under mixed_float16), which unscales and skips non-finite steps.
Gradients of variables a loss does not reach are zeros, as on the other backends.
"""

import tensorflow as tf

from keras_ffl.engines import applications, gradient_loss, unpack
from keras_ffl.optimizers import OptimizerGroup


def in_multi_worker_mode():
    strategy = tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


def train_step(model, data):
    inputs, labels = unpack(data)
    decay_scale = 1.0 / tf.distribute.get_strategy().num_replicas_in_sync
    applied = set()
    for phase in model.update_plan():
        pairs = [(update, gradient) for update in phase for gradient in update.gradients]
        with tf.GradientTape(persistent=len(pairs) > 1) as tape:
            outputs = model.forward(inputs, training=True)
            terms = model.compute_losses(outputs, labels)
            model.check_terms(terms)
            losses = [
                model.optimizer_for(update.optimizer).scale_loss(
                    gradient_loss(model, gradient, terms, tf.nn.compute_average_loss, decay_scale))
                for update, gradient in pairs
            ]
        # Every gradient of a phase comes from its one forward pass, before any update.
        grads = [tape.gradient(loss, gradient.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                 for loss, (_, gradient) in zip(losses, pairs)]
        del tape
        for update, update_grads, variables in applications(phase, grads):
            optimizer = model.optimizer_for(update.optimizer)
            if id(optimizer) in applied:  # one schedule step per mini-batch
                optimizer.iterations.assign_sub(1)
            optimizer.apply(update_grads, variables)
            applied.add(id(optimizer))
    if isinstance(model.optimizer, OptimizerGroup):
        model.optimizer.iterations.assign_add(1)
    model.after_step(outputs)
    return report(model, outputs, labels, terms)


def replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_gather(value):
    """``value`` of every replica, concatenated along the batch (replica order)."""
    context = tf.distribute.get_replica_context()
    if context is None or replicas() == 1:
        return value
    return context.all_gather(value, axis=0)


def global_mean(value):
    """The mean of ``value`` over the global batch (every element of every replica)."""
    context = tf.distribute.get_replica_context()
    if context is None or replicas() == 1:
        return tf.reduce_mean(value)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(value))
    count = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.size(value), value.dtype))
    return total / count


def cross_replica(function):
    """Runs ``function()`` once for all replicas (assignments reach every copy)."""
    context = tf.distribute.get_replica_context()
    if context is None or replicas() == 1:
        return function()
    return context.merge_call(lambda strategy: function())


def test_step(model, data):
    inputs, labels = unpack(data)
    outputs = model.forward(inputs, training=False)
    return report(model, outputs, labels, model.compute_losses(outputs, labels))


def report(model, outputs, labels, terms):
    results = model.update_metrics(outputs, labels, terms)
    if in_multi_worker_mode():
        # Keras averages step results across workers with strategy.reduce(MEAN, axis=0),
        # which needs an axis: a scalar fails ("Invalid reduction dimension 0").
        results = {name: tf.reshape(value, [1]) for name, value in results.items()}
    return results
