"""Every use of a private Keras (or TensorFlow) attribute, in one place.

Checked against Keras 3.15.1 and TensorFlow 2.21.0 (the versions BUILD.md lists): when either
moves, this module is what to read again.  Each function says which public API was looked for
and why it does not serve; nothing outside this module touches a ``_name`` of a Keras or
TensorFlow object.
"""


def iterations_variable(optimizer):
    """The variable an optimiser counts its steps in (a ``LossScaleOptimizer``'s inner one).

    The public ``optimizer.iterations`` is that variable only without gradient accumulation
    (otherwise a computed tensor); the JAX engine must find the variable itself in the
    trainer's state, and the other engines assign to it."""
    inner = getattr(optimizer, "inner_optimizer", None)
    return (inner or optimizer)._iterations


def built_variables(optimizer):
    """The variables an optimiser was built on, in the order its state follows (no public
    accessor: ``optimizer.variables`` is its own state, not what it steps)."""
    return optimizer._trainable_variables


def own_optimizer_variables(optimizer):
    """An optimiser's own state variables (iterations, learning rate), without what a subclass
    adds to ``variables`` (an ``OptimizerGroup``'s members)."""
    return optimizer._variables


def knows_variable(optimizer, variable):
    """Whether ``optimizer`` was built on ``variable`` (Keras keys its slots by a private index)."""
    try:
        optimizer._get_variable_index(variable)
        return True
    except KeyError:
        return False


def in_multi_worker_mode(strategy):
    """Whether a ``MultiWorkerMirroredStrategy`` spans several workers (a one-worker strategy
    reduces like a mirrored one); TensorFlow has no public flag."""
    return strategy.extended._in_multi_worker_mode()


def set_initial_epoch(model, epoch):
    """Makes ``fit`` start at ``epoch`` as ``keras.callbacks.BackupAndRestore`` does after
    restoring (it sets this attribute; ``fit(initial_epoch=...)`` would need the caller to know
    the epoch before the callback restores it)."""
    model._initial_epoch = epoch


def backup_epoch(callback):
    """The epoch a ``BackupAndRestore`` subclass is saving, inside its ``_save_model``."""
    return callback._current_epoch


def all_layers(model):
    """Every layer of ``model``, nested models' layers included (``model.layers`` is only the
    top level)."""
    return list(model._flatten_layers())


def tracing_for_xla():
    """Whether TensorFlow is tracing a function XLA will compile (a ``tf.function`` with
    ``jit_compile=True``, or one called inside it).  TensorFlow has no public way to ask; its
    own control-flow code asks ``GraphOrParentsInXlaContext``."""
    from tensorflow.python.framework import ops
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph())


class SkipsBuiltSymbolicBuild:
    """Mixin for a ``keras.Model`` built and compiled before ``fit``.

    Keras 3's TensorFlow trainer builds a distributed model at the start of ``fit`` from a first
    batch it averages with ``strategy.reduce``, which MultiWorkerMirroredStrategy cannot do
    eagerly on per-replica values (keras-team/keras#20585: "unsupported type PerReplica").
    When everything it would build already exists, the build is skipped, which also spares
    pulling and discarding a first batch."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


__all__ = ["iterations_variable", "built_variables", "own_optimizer_variables", "knows_variable",
           "in_multi_worker_mode", "set_initial_epoch", "backup_epoch", "all_layers", "tracing_for_xla",
           "SkipsBuiltSymbolicBuild"]
