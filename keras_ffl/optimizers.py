"""Several optimisers stepped by one method (AFD: SGD on the networks, Adam on the feature
extractors and discriminators), held as the model's one ``optimizer``.

Why one object: Keras's JAX trainer threads only ``model.optimizer.variables`` through its
jitted state (donation, DataParallel shardings, syncing back); a second optimiser held beside
it would be read as constants and lose its updates.  A group whose ``variables`` are its own
plus every member's keeps all of them in the trainer's state on every backend, and gives one
checkpoint layout whatever the backend: each member saves itself under its role name.

The group steps nothing itself: the method's engine applies each member to the variables
the method declares for it (``OnlineDistiller.update_plan``), and advances the group's own
``iterations`` once per training step, which is what callbacks and progress read.
"""

import keras

from keras_ffl import keras_private


@keras.saving.register_keras_serializable(package="keras_ffl")
class OptimizerGroup(keras.optimizers.Optimizer):
    """``OptimizerGroup({"networks": SGD(...), "features": Adam(...)})``: members by role."""

    def __init__(self, members, name="optimizer_group", **kwargs):
        kwargs.pop("learning_rate", None)
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        if not members:
            raise ValueError("an OptimizerGroup needs at least one member")
        self.roles = tuple(members)
        for role, optimizer in members.items():
            if isinstance(optimizer, OptimizerGroup):
                raise ValueError("optimizer groups do not nest")
            if hasattr(self, role):
                raise ValueError(f"'{role}' cannot name a member: OptimizerGroup already has that attribute")
            # As attributes named by role: Keras's saver walks them, so each member's state is
            # stored under its role, the same on every backend.
            setattr(self, role, optimizer)

    @property
    def members(self):
        return {role: getattr(self, role) for role in self.roles}

    @property
    def primary(self):
        return getattr(self, self.roles[0])

    def build(self, var_list):
        """Builds only the group's own counter; members are built by the method on their own
        variables (``OnlineDistiller.build_optimizers``)."""
        super().build([])

    @property
    def variables(self):
        return keras_private.own_optimizer_variables(self)[:] + [v for role in self.roles for v in getattr(self, role).variables]

    # The group's own variables only: each member saves and loads its own state.
    def save_own_variables(self, store):
        for i, variable in enumerate(keras_private.own_optimizer_variables(self)):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        for i, variable in enumerate(keras_private.own_optimizer_variables(self)):
            variable.assign(store[str(i)])

    # Callbacks such as ReduceLROnPlateau act on ``model.optimizer.learning_rate``: that is the
    # first member's (the networks' optimiser).
    @property
    def learning_rate(self):
        return self.primary.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        if hasattr(self, "roles"):
            self.primary.learning_rate = value

    def apply(self, grads, trainable_variables=None):
        raise NotImplementedError("an OptimizerGroup is stepped member by member by the method's engine")

    def scale_loss(self, loss):
        return loss

    def finalize_variable_values(self, var_list):
        for optimizer in self.members.values():
            optimizer.finalize_variable_values([v for v in var_list if keras_private.knows_variable(optimizer, v)])

    def get_config(self):
        return {
            "name": self.name,
            "members": {role: keras.saving.serialize_keras_object(getattr(self, role)) for role in self.roles},
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        members = {
            role: keras.saving.deserialize_keras_object(member, custom_objects=custom_objects)
            for role, member in config.pop("members").items()
        }
        return cls(members, **{k: v for k, v in config.items() if k == "name"})


@keras.saving.register_keras_serializable(package="keras_ffl")
class EpochCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``0.5 * lr * (1 + cos(pi * e / epochs))`` for the whole of epoch e (set at its start, as
    MCL-OKD's ``adjust_lr`` does with one SGDR cycle of ``epochs``), counted in optimiser
    iterations so that a restored optimiser resumes it."""

    def __init__(self, initial_learning_rate, epochs, steps_per_epoch):
        self.initial_learning_rate = float(initial_learning_rate)
        self.epochs, self.steps_per_epoch = int(epochs), int(steps_per_epoch)

    def __call__(self, step):
        from keras import ops

        epoch = ops.floor(ops.cast(step, "float32") / float(self.steps_per_epoch))
        return 0.5 * self.initial_learning_rate * (1.0 + ops.cos(3.141592653589793 * epoch / float(self.epochs)))

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate, "epochs": self.epochs,
                "steps_per_epoch": self.steps_per_epoch}
