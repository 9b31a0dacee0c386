"""A few training steps of methods through ``fit`` on the running Keras backend, recording
every variable after every step.

    KERAS_BACKEND=jax JAX_ENABLE_X64=1 python tests/backend_fit.py CASES.json

CASES.json lists ``{"overrides": {...Config fields...}, "weights": path, "batches": npz path
(``in_*`` inputs and ``y`` labels of every step, in order), "batch_size": B, "epoch": E,
"dtype": "float32" | "float64", "output": npz path, "defect": optional name}``.  Each case
builds the method as the command line does (``keras_ffl.build``), loads the initial weights
and optimiser state from a backend-neutral ``.weights.h5``, and runs one epoch (``E``, so the
ramp-up and the epoch variable are those of epoch ``E``) of ``fit`` over the batches without
shuffling.  After every step it writes the whole state: every model variable by path
(trainable and not: BatchNorm statistics, memory banks, temporal means, counters), every
optimiser variable (slots, iteration counters, AFD's Adam) and the logged losses.

``defect`` plants a known bug, so that the harness shows it would catch one: ``frozen_mean``
(the temporal mean never moves, the JAX bug this harness was written for) and
``attached_teacher`` (KDCL's teacher not detached).
"""

import json
import os
import sys

import numpy as np


def plant(defect):
    if defect == "frozen_mean":
        from keras_ffl.methods.pcl import PCL

        def count_only(self, outputs):
            self.ema_steps.assign(self.ema_steps + 1)

        PCL.after_step = count_only
    elif defect == "attached_teacher":
        # Both detachments go: KDCL's own ``ops.stop_gradient`` and ``distillation_kl``'s, which
        # alone would still hide the teacher's gradient (planting only one changes nothing).
        import functools
        import types

        from keras import ops

        from keras_ffl.methods import kdcl

        kdcl.ops = types.SimpleNamespace(**{n: getattr(ops, n) for n in dir(ops) if not n.startswith("_")})
        kdcl.ops.stop_gradient = lambda x: x
        kdcl.distillation_kl = functools.partial(kdcl.distillation_kl, detach=False)
    elif defect:
        raise ValueError(f"unknown defect {defect}")


def state_arrays(model):
    # Paths repeat (branches share layer names): the position in ``model.weights`` tells
    # them apart, the same on every backend.
    arrays = {f"variable {i} {v.path}": np.asarray(v) for i, v in enumerate(model.weights)}
    # An optimiser's own name (``sgd_13``) counts the optimisers the process made before it.
    arrays.update({f"optimizer variable {i} {v.path.split('/', 1)[-1]}": np.asarray(v)
                   for i, v in enumerate(model.optimizer.variables)})
    return arrays


def temporal_mean_pairs(model):
    """``{"meta trainable pairs": [[live, mean], ...], "meta statistics pairs": ...}``: positions
    in ``model.weights`` of each live variable and its temporal mean (PCL)."""
    if not hasattr(model, "ema_models"):
        return {}
    position = {id(v): i for i, v in enumerate(model.weights)}
    pairs = {"trainable": [], "statistics": []}
    for live, mean in zip(model.student_models(), model.ema_models()):
        pairs["trainable"] += [(position[id(a)], position[id(b)])
                               for a, b in zip(live.trainable_variables, mean.trainable_variables)]
        pairs["statistics"] += [(position[id(a)], position[id(b)])
                                for a, b in zip(live.non_trainable_variables, mean.non_trainable_variables)]
    return {f"meta {kind} pairs": np.array(p, np.int64) for kind, p in pairs.items()}


def run_case(case):
    import keras

    from helpers import tiny_config
    from keras_ffl.build import build_model, compile_model

    from keras_ffl.build import set_precision

    plant(case.get("defect"))
    set_precision(case.get("dtype", "float32"))
    recorded = {}

    class RecordEveryStep(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            sync = getattr(self.model, "jax_state_sync", None)
            if sync is not None:  # the JAX trainer keeps the state outside the variables
                sync()
            for name, value in state_arrays(self.model).items():
                recorded[f"step{batch} {name}"] = value
            for name, value in (logs or {}).items():
                if not name.startswith(("acc_", "top5_")):
                    recorded[f"step{batch} logged {name}"] = np.asarray(value)

    try:
        config = tiny_config(**case["overrides"])
        batch_size = case["batch_size"]
        model = build_model(config, 10, (32, 32, 3))
        data = np.load(case["batches"])
        compile_model(model, config, len(data["y"]) // batch_size)
        model.load_weights(case["weights"])
        inputs = {k[len("in_"):]: data[k] for k in data.files if k.startswith("in_")}
        inputs = inputs["images"] if list(inputs) == ["images"] else inputs
        epoch = int(case["epoch"])
        model.fit(inputs, data["y"], batch_size=batch_size, epochs=epoch + 1, initial_epoch=epoch, shuffle=False,
                  verbose=0, callbacks=[RecordEveryStep()])
        np.savez(case["output"], **recorded, **temporal_mean_pairs(model))
    finally:
        set_precision("float32")


def run_cases(path, run):
    """Runs ``run`` on every case of the JSON file ``path``, printing each one's time."""
    import time

    with open(path) as f:
        cases = json.load(f)
    for case in cases:
        started = time.time()
        run(case)
        output = case.get("output") or case["steps"][0]["output"]
        print(f"{os.path.basename(output)}: {time.time() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    run_cases(sys.argv[1], run_case)
