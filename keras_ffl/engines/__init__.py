"""One engine per Keras backend turns a method's declared updates into ``train_step``.

A method declares its loss terms and an update plan (``OnlineDistiller.update_plan``): phases,
each one forward pass followed by optimiser updates, each update differentiating named terms
(plus coupled weight decay) with respect to some variables.  The engine runs that plan the
way its backend wants:

* ``tensorflow``: ``GradientTape``, ``tf.distribute`` (the global-batch mean of each term,
  gradients summed across replicas) and loss scaling inside the tape;
* ``jax``: a stateless step under ``jax.vjp`` (one forward pass, one pull-back per loss),
  every optimiser's state carried in the trainer's state, ``keras.distribution`` data
  parallelism for free;
* ``torch``: ``torch.autograd.grad`` per loss on one forward pass.

The plan is walked once, here (``run_plan``): phases in order, each phase's gradients all
taken from its one forward pass before any of its updates, every optimiser advancing its
iteration counter once per training step however many times a plan applies it (DML's
sequential update), so learning-rate schedules count mini-batches, and an ``OptimizerGroup``
counting the step itself.  An engine supplies a ``PlanStep``: how to take a phase's gradients,
apply an optimiser and move a counter on its backend.
"""

import importlib

import keras

from keras_ffl import keras_private
from keras_ffl.optimizers import OptimizerGroup

_ENGINES = {"tensorflow": "keras_ffl.engines.tensorflow", "jax": "keras_ffl.engines.jax",
            "torch": "keras_ffl.engines.torch"}


def current():
    """The engine module of the running Keras backend."""
    backend = keras.backend.backend()
    if backend not in _ENGINES:
        raise RuntimeError(f"keras_ffl has no engine for the '{backend}' backend: use one of {', '.join(_ENGINES)}")
    return importlib.import_module(_ENGINES[backend])


def unpack(data):
    """``(inputs, labels)`` of a batch (a trailing sample weight is not used by the methods)."""
    if isinstance(data, (list, tuple)):
        return data[0], data[1]
    raise ValueError("keras_ffl methods train on (inputs, labels) batches")


def gradient_loss(model, gradient, terms, reduce, decay_scale=1.0):
    """The loss of one declared ``Gradient``: its weighted terms, reduced by ``reduce``, plus
    its coupled L2 penalty times ``decay_scale``."""
    loss = model.weighted_sum({n: terms[n] for n in gradient.terms}, reduce=reduce)
    if gradient.decay:
        loss = loss + decay_scale * model.l2_penalty(gradient.decay)
    return loss


def applications(phase, gradients):
    """``[(update, grads, variables)]`` of one phase, from ``gradients`` aligned with
    ``[g for update in phase for g in update.gradients]``."""
    position, out = 0, []
    for update in phase:
        count = len(update.gradients)
        grads = [x for taken in gradients[position:position + count] for x in taken]
        variables = [v for g in update.gradients for v in g.variables]
        out.append((update, grads, variables))
        position += count
    return out


class PlanStep:
    """What one backend does inside ``run_plan``, for one batch of ``inputs`` and ``labels``."""

    def __init__(self, model, inputs, labels):
        self.model, self.inputs, self.labels = model, inputs, labels

    def gradients(self, pairs):
        """Runs the forward pass once and returns ``(grads, outputs, terms)``: for each
        ``(update, gradient)`` pair, the gradients of its loss (``gradient_loss``, scaled by its
        optimiser) with respect to ``gradient.variables``."""
        raise NotImplementedError

    def apply(self, optimizer, grads, variables):
        optimizer.apply(grads, variables)

    def count(self, optimizer, delta):
        """Adds ``delta`` to ``optimizer``'s iteration counter."""
        keras_private.iterations_variable(optimizer).assign_add(delta)


def run_plan(model, step):
    """Walks ``model.update_plan()`` with a backend's ``PlanStep``; returns the last phase's
    ``(outputs, terms)``."""
    applied = set()
    outputs = terms = None
    for phase in model.update_plan():
        pairs = [(update, gradient) for update in phase for gradient in update.gradients]
        grads, outputs, terms = step.gradients(pairs)
        for update, update_grads, variables in applications(phase, grads):
            optimizer = model.optimizer_for(update.optimizer)
            if id(optimizer) in applied:  # one schedule step per mini-batch
                step.count(optimizer, -1)
            step.apply(optimizer, update_grads, variables)
            applied.add(id(optimizer))
    if isinstance(model.optimizer, OptimizerGroup):
        step.count(model.optimizer, 1)
    return outputs, terms
