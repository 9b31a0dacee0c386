"""keras_ffl as a Keras library: every method built by hand from networks, trained with nothing
but ``compile`` and ``fit`` on any data Keras takes, the ramp-up following the epoch by
itself, ``.keras`` round trips that resume training exactly, standalone parts, and a public
API that imports no TensorFlow until it is used."""

import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from helpers import user_env
from keras_ffl import AFD, CLILR, DML, FFCL, FFL, KDCL, MCLOKD, ONE, PCL, OfflineKD, OKDDip, Vanilla, backbones
from keras_ffl.methods import registry

SHAPE, CLASSES = (16, 16, 3), 10


def data(count=32, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    templates = rng.normal(size=(CLASSES, *SHAPE)).astype("float32")
    images = templates[labels] + 0.5 * rng.normal(size=(count, *SHAPE)).astype("float32")
    return images, labels


NCE_K = 4


def inputs_for(method, images, labels):
    """MCL-OKD reads each example's index and its contrast indices (the example, then negatives
    of other classes), a plain dict Keras slices like the images."""
    if method != "mcl_okd":
        return images
    rng = np.random.default_rng(1)
    index = np.arange(len(images))
    negatives = [rng.choice(np.flatnonzero(labels != y), NCE_K) for y in labels]
    return {"images": images, "index": index, "contrast": np.column_stack([index, np.stack(negatives)])}


def networks(count, backbone="resnet8"):
    return [backbones.build_network(backbone, SHAPE, CLASSES, name=f"net{k}") for k in range(count)]


def teacher():
    keras.utils.set_random_seed(7)
    return FFL(networks(2)).part("fused")


def make(method, rampup_epochs=1):
    """Each method as a user builds it: networks from ``keras_ffl.backbones``, then the method."""
    keras.utils.set_random_seed(0)
    common = dict(rampup_epochs=rampup_epochs)
    if method in ("ffl", "one"):
        trunk, heads = backbones.build_branches("resnet8", SHAPE, CLASSES, num_branches=3 if method == "one" else 2)
        return (FFL if method == "ffl" else ONE)(heads, trunk=trunk, **common)
    if method == "ffl-mixed":
        return FFL([*networks(1), backbones.build_network("wrn10_1", SHAPE, CLASSES, name="net1")], **common)
    if method == "kd":
        return OfflineKD(networks(1), teacher=teacher(), **common)
    if method in ("cl_ilr", "okddip", "mcl_okd", "pcl"):
        trunk, heads = backbones.build_branches("resnet8", SHAPE, CLASSES, num_branches=3)
        extra = {"cl_ilr": dict(preset="okddip"), "mcl_okd": dict(memory_size=32, nce_k=NCE_K)}.get(method, {})
        cls = {"cl_ilr": CLILR, "okddip": OKDDip, "mcl_okd": MCLOKD, "pcl": PCL}[method]
        return cls(heads, trunk=trunk, **extra, **common)
    cls = {"dml": DML, "afd": AFD, "ffcl": FFCL, "vanilla": Vanilla, "kdcl": KDCL}[method]
    return cls(networks(1 if method == "vanilla" else 2), **common)


#: Every registered method, and FFL over networks of two architectures.
METHODS = [*registry.NAMES, "ffl-mixed"]


@pytest.mark.parametrize("method", METHODS)
def test_compile_and_fit_from_numpy_with_no_prior_call_and_the_ramp_up_follows_the_epoch(method):
    model = make(method, rampup_epochs=1)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    x, y = data()
    history = model.fit(inputs_for(method, x, y), y, batch_size=8, epochs=2, verbose=0).history
    for epoch, ramp in enumerate((math.exp(-5.0), 1.0)):  # w(0) = exp(-5); w(1) = 1, past the ramp-up
        terms = {n: v[epoch] for n, v in history.items() if n in model.term_names}
        assert set(terms) == set(model.term_names)
        expected = sum(model.term_weights.get(n, 1.0) * (ramp if n.startswith("kd_") else 1.0) * v
                       for n, v in terms.items())
        assert history["loss"][epoch] == pytest.approx(expected, rel=1e-5), epoch
    if method == "mcl_okd":
        assert min(history["con"]) > 0  # the contrast indices reached the loss
    assert float(model.epoch) == 1.0


#: One method of each update pattern (one optimiser, two, sequential, a state moved after the
#: step) and of each input structure (images; MCL-OKD's dict): Keras's data adapters see
#: nothing else of a method, and every method runs ``fit`` on arrays above.
DATA_SOURCE_METHODS = ["ffl", "dml", "afd", "mcl_okd", "pcl"]


@pytest.mark.parametrize("method", DATA_SOURCE_METHODS)
def test_fit_takes_tf_data_and_a_py_dataset(method):
    images, y = data()
    x = inputs_for(method, images, y)
    sources = [tf.data.Dataset.from_tensor_slices((x, y)).batch(8)]
    if method in ("ffl", "afd", "dml"):  # one of each update pattern also from a PyDataset

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return 4

            def __getitem__(self, index):
                return x[8 * index:8 * index + 8], y[8 * index:8 * index + 8]

        sources.append(Batches())
    for source in sources:
        model = make(method)
        model.compile(optimizer="sgd")
        history = model.fit(source, epochs=1, verbose=0).history
        assert np.isfinite(history["loss"][0])
        assert model.evaluate(source, verbose=0, return_dict=True)["acc_net0"] >= 0.0


def weights_of(model):
    return [np.asarray(v) for v in model.weights] + [np.asarray(v) for v in model.optimizer.variables]


@pytest.mark.parametrize("method", METHODS)
def test_keras_file_round_trip_resumes_training_exactly(tmp_path, method):
    images, y = data()
    x = inputs_for(method, images, y)
    model = make(method, rampup_epochs=3)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / f"{method}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    def settings(m):
        return {k: v for k, v in m.get_config().items() if k not in ("branches", "trunk", "teacher")}

    assert type(loaded) is type(model) and settings(loaded) == settings(model)
    before, after = model.predict(images, verbose=0), loaded.predict(images, verbose=0)
    assert before.keys() == after.keys()
    for part in before:
        np.testing.assert_array_equal(before[part], after[part])
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_array_equal(a, b)  # weights, BN statistics, epoch and every optimiser's state
    model.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=8, epochs=2, initial_epoch=1, verbose=0, shuffle=False)
    for a, b in zip(weights_of(model), weights_of(loaded)):
        np.testing.assert_array_equal(a, b)


def test_afd_defaults_to_the_paper_adam_and_keeps_both_optimisers_through_a_keras_file(tmp_path):
    model = make("afd")
    model.compile(optimizer="sgd")
    features = model.optimizer_for("features")
    assert isinstance(features, keras.optimizers.Adam) and float(features.learning_rate) == pytest.approx(2e-5)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "afd.keras")
    loaded = keras.saving.load_model(tmp_path / "afd.keras")
    assert int(loaded.optimizer_for("features").iterations) == int(loaded.optimizer_for("networks").iterations) == 4


def test_parts_are_standalone_models_with_their_own_weights():
    model = make("ffl")
    x, _ = data(4)
    outputs = model(x)
    net1 = model.subnetwork(1)
    assert isinstance(net1, keras.Model)
    np.testing.assert_allclose(net1(x), outputs["net1"], rtol=1e-6, atol=1e-6)
    trunk, head = model.trunk.count_params(), model.branches[1].count_params()
    assert net1.count_params() == trunk + head  # the shared trunk and branch 1, nothing else
    fused = model.part("fused")
    np.testing.assert_allclose(fused(x), outputs["fused"], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="no part 'teacher' .*choose from net0, net1, ensemble, fused"):
        model.part("teacher")
    ffcl = make("ffcl")
    assert ffcl.part("pretrained0").count_params() == ffcl.pretrained[0].count_params()


def test_loss_and_metrics_arguments_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="computes its own loss terms"):
        make("dml").compile(optimizer="sgd", loss="mse")


def test_the_public_api_imports_no_backend_until_used():
    code = ("import sys, keras_ffl; from keras_ffl import config, specs, paths; "
            "assert not any(m in sys.modules for m in ('tensorflow', 'jax', 'keras')), sorted(sys.modules); "
            "from keras_ffl import FFL, DML, ONE, AFD, FFCL, Vanilla, OfflineKD, backbones; "
            "from keras_ffl import CLILR, OKDDip, KDCL, MCLOKD, PCL; print('ok')")
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


@pytest.mark.parametrize("imports", ["import keras_ffl, keras", "import keras, keras_ffl",
                                     "from keras_ffl import callbacks; import keras"])
def test_a_keras_file_loads_in_a_new_process_after_import_keras_ffl_alone(tmp_path, imports):
    model = make("okddip")  # a method, its layers (attention heads) and a backbone's
    model.compile(optimizer="sgd")
    x, y = data(8)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "okddip.keras")
    model.save(path)
    code = f"{imports}; import sys; print(type(keras.saving.load_model(sys.argv[1])).__name__)"
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().splitlines()[-1] == "OKDDip", result.stderr[-2000:]


def test_importing_the_library_changes_no_global_logging():
    """A library import leaves the process's logging as it found it (the README shows the one
    line that quiets TensorFlow for a script: ``keras_ffl.import_keras_quietly()``)."""
    code = """
import logging, os, warnings
def state():
    root = logging.getLogger()
    return (root.level, list(root.handlers), list(warnings.filters), logging.getLogger("tensorflow").level,
            {k: v for k, v in os.environ.items() if k.startswith(("TF_", "KERAS", "ABSL", "GRPC"))})
before = state()
import keras_ffl
assert state() == before, (before, state())
print("unchanged")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                            env=user_env(PYTHONPATH=REPO), timeout=300)
    assert result.returncode == 0 and "unchanged" in result.stdout, result.stderr[-2000:]
