"""One training step of a method on the running Keras backend, from given initial weights.

    KERAS_BACKEND=jax python tests/backend_step.py CASES.json

CASES.json lists ``{"overrides": {...Config fields...}, "weights": path, "batch": npz path (``in_*``
inputs, ``y`` labels),
"output": npz path, "dtype": "float32" | "float64", "data_parallel": devices (JAX)}``; ``"steps":
[{"batch", "output"}, ...]`` runs several batches through one model, each from the initial state.  Each case builds the method exactly as
the command line does (``keras_ffl.build``), loads the initial weights *and optimiser state*
(a backend-neutral ``.weights.h5``), takes one ``train_on_batch`` step and writes the logged
losses, every weight and every optimiser variable to its output file.  The backend tests run
it under JAX and compare with the same step under TensorFlow.
"""

import os
import sys

import numpy as np


def state_arrays(model, logs):
    arrays = {f"weight {i} {v.path}": np.asarray(v) for i, v in enumerate(model.weights)}
    arrays.update({f"optimizer variable {i}": np.asarray(v) for i, v in enumerate(model.optimizer.variables)})
    arrays.update({f"logged {name}": np.asarray(value) for name, value in logs.items()
                   if not name.startswith(("acc_", "top5_"))})
    return arrays


def run_case(case):
    import keras

    from helpers import tiny_config
    from keras_ffl.build import build_model, compile_model

    from backend_fit import plant

    from keras_ffl.build import set_precision

    plant(case.get("defect"))
    set_precision(case.get("dtype", "float32"))
    steps = case.get("steps") or [dict(batch=case["batch"], output=case["output"])]
    if case.get("data_parallel"):  # every local device (JAX: keras.distribution)
        import jax

        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        assert len(jax.devices()) == case["data_parallel"]
    try:
        config = tiny_config(**case["overrides"])
        model = build_model(config, 10, (32, 32, 3))
        compile_model(model, config, 4)
        for step in steps:  # each from the same initial state, through the one compiled step
            batch = np.load(step["batch"])
            inputs = {k[len("in_"):]: batch[k] for k in batch.files if k.startswith("in_")}
            inputs = inputs["images"] if list(inputs) == ["images"] else inputs
            model.load_weights(case["weights"])
            model.epoch.assign(float(case.get("epoch", 0)))
            logs = model.train_on_batch(inputs, batch["y"], return_dict=True)
            np.savez(step["output"], **state_arrays(model, logs))
    finally:
        set_precision("float32")
        if case.get("data_parallel"):
            keras.distribution.set_distribution(None)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from backend_fit import run_cases

    run_cases(sys.argv[1], run_case)
