"""The PyTorch engine: one forward pass, ``torch.autograd.grad`` per declared loss.

Keras's torch backend holds every variable as a ``torch.nn.Parameter``; each declared loss is
differentiated with respect to its variables on the one graph of the phase (kept until the
last loss), and every update is applied after all of its phase's gradients exist.  One
device: Keras's torch trainer has no data parallelism to plan for.
"""

import torch
from keras import ops

from keras_ffl.engines import PlanStep, gradient_loss, run_plan, unpack
from keras_ffl.engines import single_program

# The step sees the global batch in one program (the collectives the methods call).
all_gather, global_mean, cross_replica = (single_program.all_gather, single_program.global_mean,
                                          single_program.cross_replica)


class AutogradStep(PlanStep):
    def gradients(self, pairs):
        model = self.model
        outputs = model.forward(self.inputs, training=True)
        terms = model.compute_losses(outputs, self.labels)
        model.check_terms(terms)
        grads = []
        for i, (update, gradient) in enumerate(pairs):
            loss = model.optimizer_for(update.optimizer).scale_loss(gradient_loss(model, gradient, terms, ops.mean))
            values = [v.value for v in gradient.variables]
            taken = torch.autograd.grad(loss, values, retain_graph=i < len(pairs) - 1, allow_unused=True)
            grads.append([torch.zeros_like(v) if g is None else g for g, v in zip(taken, values)])
        return grads, outputs, terms

    def apply(self, optimizer, grads, variables):
        with torch.no_grad():
            optimizer.apply(grads, variables)

    def count(self, optimizer, delta):
        with torch.no_grad():
            super().count(optimizer, delta)


def train_step(model, data):
    inputs, labels = unpack(data)
    outputs, terms = run_plan(model, AutogradStep(model, inputs, labels))
    with torch.no_grad():
        model.after_step({k: v for k, v in outputs.items()})
        return model.update_metrics(outputs, labels, {n: v.detach() for n, v in terms.items()})


def test_step(model, data):
    inputs, labels = unpack(data)
    with torch.no_grad():
        outputs = model.forward(inputs, training=False)
        return model.update_metrics(outputs, labels, model.compute_losses(outputs, labels))
