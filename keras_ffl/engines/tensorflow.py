"""The TensorFlow engine: GradientTape, tf.distribute and loss scaling.

Each term is reduced with ``tf.nn.compute_average_loss`` (a mean over the *global* batch, as
Keras's built-in losses are under ``tf.distribute``); the optimiser sums gradients across
replicas, so the weight-decay penalty is divided by the replica count to give exactly
``rate * w`` after the sum.  Losses are scaled inside the tape by their optimiser
(``LossScaleOptimizer`` under mixed_float16), which unscales and skips non-finite steps.
Gradients of variables a loss does not reach are zeros, as on the other backends.
"""

import tensorflow as tf

from keras_ffl import keras_private
from keras_ffl.engines import PlanStep, gradient_loss, run_plan, unpack


def in_multi_worker_mode():
    strategy = tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and keras_private.in_multi_worker_mode(strategy)


class TapeStep(PlanStep):
    def __init__(self, model, inputs, labels):
        super().__init__(model, inputs, labels)
        self.decay_scale = 1.0 / tf.distribute.get_strategy().num_replicas_in_sync

    def gradients(self, pairs):
        model = self.model
        with tf.GradientTape(persistent=len(pairs) > 1) as tape:
            outputs = model.forward(self.inputs, training=True)
            terms = model.compute_losses(outputs, self.labels)
            model.check_terms(terms)
            losses = [
                model.optimizer_for(update.optimizer).scale_loss(
                    gradient_loss(model, gradient, terms, tf.nn.compute_average_loss, self.decay_scale))
                for update, gradient in pairs
            ]
        grads = [tape.gradient(loss, gradient.variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                 for loss, (_, gradient) in zip(losses, pairs)]
        del tape
        return grads, outputs, terms


def train_step(model, data):
    inputs, labels = unpack(data)
    outputs, terms = run_plan(model, TapeStep(model, inputs, labels))
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
