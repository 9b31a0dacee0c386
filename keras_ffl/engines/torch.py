"""The PyTorch engine: one forward pass, ``torch.autograd.grad`` per declared loss.

Keras's torch backend holds every variable as a ``torch.nn.Parameter``; each declared loss is
differentiated with respect to its variables on the one graph of the phase (kept until the
last loss), and every update is applied after all of its phase's gradients exist.  One
device: Keras's torch trainer has no data parallelism to plan for.
"""

import torch
from keras import ops

from keras_ffl.engines import applications, gradient_loss, unpack
from keras_ffl.engines import single_program
from keras_ffl.optimizers import OptimizerGroup

# The step sees the global batch in one program (the collectives the methods call).
all_gather, global_mean, cross_replica = (single_program.all_gather, single_program.global_mean,
                                          single_program.cross_replica)


def train_step(model, data):
    inputs, labels = unpack(data)
    applied = set()
    for phase in model.update_plan():
        pairs = [(update, gradient) for update in phase for gradient in update.gradients]
        outputs = model.forward(inputs, training=True)
        terms = model.compute_losses(outputs, labels)
        model.check_terms(terms)
        grads = []
        for i, (update, gradient) in enumerate(pairs):
            loss = model.optimizer_for(update.optimizer).scale_loss(gradient_loss(model, gradient, terms, ops.mean))
            values = [v.value for v in gradient.variables]
            taken = torch.autograd.grad(loss, values, retain_graph=i < len(pairs) - 1, allow_unused=True)
            grads.append([torch.zeros_like(v) if g is None else g for g, v in zip(taken, values)])
        with torch.no_grad():
            for update, update_grads, variables in applications(phase, grads):
                optimizer = model.optimizer_for(update.optimizer)
                if id(optimizer) in applied:  # one schedule step per mini-batch
                    optimizer.iterations.assign(optimizer.iterations - 1)
                optimizer.apply(update_grads, variables)
                applied.add(id(optimizer))
    if isinstance(model.optimizer, OptimizerGroup):
        model.optimizer.iterations.assign(model.optimizer.iterations + 1)
    with torch.no_grad():
        model.after_step({k: v for k, v in outputs.items()})
        return model.update_metrics(outputs, labels, {n: v.detach() for n, v in terms.items()})


def test_step(model, data):
    inputs, labels = unpack(data)
    with torch.no_grad():
        outputs = model.forward(inputs, training=False)
        return model.update_metrics(outputs, labels, model.compute_losses(outputs, labels))
