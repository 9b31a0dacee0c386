"""One training step of a method on the running Keras backend, from given initial weights.

    KERAS_BACKEND=jax python tests/backend_step.py CASES.json

CASES.json lists ``{"overrides": {...Config fields...}, "weights": path, "batch": npz path,
"output": npz path, "dtype": "float32" | "float64", "data_parallel": devices (JAX)}``.  Each case builds the method exactly as
the command line does (``keras_ffl.build``), loads the initial weights *and optimiser state*
(a backend-neutral ``.weights.h5``), takes one ``train_on_batch`` step and writes the logged
losses, every weight and every optimiser variable to its output file.  The backend tests run
it under JAX and compare with the same step under TensorFlow.
"""

import json
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

    keras.mixed_precision.set_global_policy(case.get("dtype", "float32"))
    if case.get("data_parallel"):  # every local device (JAX: keras.distribution)
        import jax

        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        assert len(jax.devices()) == case["data_parallel"]
    try:
        config = tiny_config(**case["overrides"])
        batch = np.load(case["batch"])
        model = build_model(config, 10, batch["x"].shape[1:])
        compile_model(model, config, 4)
        model.load_weights(case["weights"])
        model.epoch.assign(float(case.get("epoch", 0)))
        logs = model.train_on_batch(batch["x"], batch["y"], return_dict=True)
        np.savez(case["output"], **state_arrays(model, logs))
    finally:
        keras.mixed_precision.set_global_policy("float32")
        if case.get("data_parallel"):
            keras.distribution.set_distribution(None)


def main(path):
    with open(path) as f:
        cases = json.load(f)
    for case in cases:
        run_case(case)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1])
