"""Export one part of a trained model for deployment, and prove each artifact matches Keras.

    python -m keras_ffl.export --name=ffl_resnet8x2_fashion_mnist --part=net0
    python -m keras_ffl.export --model_dir=runs/quickstart_ffl --part=fused --formats=onnx

The source is a zoo name or a run directory; the part is a sub-network (``net{k}``: only its
own weights), ``fused``, ``ensemble`` or a method's other teachers.  Formats:

* ``saved_model``: ``model.export`` (TF SavedModel, ``serve`` / ``serving_default``) for TF Serving;
* ``onnx``: ``model.export(format="onnx")`` (tf2onnx), checked with onnxruntime;
* ``tflite``: converted from the SavedModel, checked with the TFLite interpreter.

Every artifact takes float32 pixels in [0, 255], NHWC, any batch size, and returns logits:
the training pipeline's standardisation is inside the graph, and ``metadata.json`` records it
with the class names.  Each artifact is run on real test images of the model's dataset and
compared with Keras; the command exits 1, writing nothing, when any max abs difference
exceeds ``--tolerance``.  Artifacts are assembled in a staging folder and moved into
``--output_dir`` only when all of them pass, so an interrupted export leaves no half-written
file where a good one is expected.
"""

import json
import os
import shutil
import sys
import time
import warnings

from absl import flags

from keras_ffl.backend import INSTALL, installed
from keras_ffl.cli import run_main
from keras_ffl.config import ConfigError
from keras_ffl.command_line import parse_argv
from keras_ffl.files import atomic_write_text

FORMATS = ("saved_model", "onnx", "tflite")
ARTIFACTS = {"saved_model": "saved_model", "onnx": "model.onnx", "tflite": "model.tflite"}


class ParityError(Exception):
    """An artifact disagrees with Keras beyond the tolerance (exit 1)."""


def define_flags(flag_values):
    flags.DEFINE_string("name", "", "Zoo model to export (see python -m keras_ffl.zoo list).", flag_values=flag_values)
    flags.DEFINE_string("model_dir", "", "Or: a run directory written by keras_ffl.train.", flag_values=flag_values)
    flags.DEFINE_string("part", "net0", "Part to export: net0, net1..., fused, ensemble, teacher.",
                        flag_values=flag_values)
    flags.DEFINE_list("formats", list(FORMATS), f"Any of {', '.join(FORMATS)}.", flag_values=flag_values)
    flags.DEFINE_string("output_dir", "", "Where the artifacts go (default exports/<source>_<part>).",
                        flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False, "Replace an existing output_dir (only once the new export passed).",
                      flag_values=flag_values)
    flags.DEFINE_float("tolerance", 1e-4, "Largest max abs logit difference allowed against Keras.",
                       flag_values=flag_values)
    flags.DEFINE_integer("parity_examples", 256, "Test images used for the parity check.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_integer("latency_runs", 200, "Batch-1 calls timed per runtime (0 = skip).", lower_bound=0,
                         flag_values=flag_values)
    flags.DEFINE_string("data_dir", "", "Data location override for the parity images.", flag_values=flag_values)
    flags.DEFINE_string("base_url", "", "Zoo download base URL override.", flag_values=flag_values)
    flags.DEFINE_string("cache_dir", "", "Zoo download cache override.", flag_values=flag_values)


def check_request(name, model_dir, formats, output_dir, overwrite):
    """Everything checkable before TensorFlow loads; returns the resolved output_dir."""
    if bool(name) == bool(model_dir):
        raise ConfigError("give exactly one of --name (a zoo model) or --model_dir (a run directory)")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"--formats: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FORMATS)}")
    if model_dir and not os.path.exists(os.path.join(model_dir, "config.json")):
        raise ConfigError(f"no config.json in {model_dir}: is it a keras_ffl model_dir?")
    if not installed("tensorflow"):
        raise ConfigError("SavedModel, ONNX and TFLite are written through TensorFlow, which is not installed here: "
                          f"{INSTALL['tensorflow']} (weights trained on any backend export the same)")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConfigError(f"--output_dir {output_dir} exists and is not a directory")
    if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ConfigError(f"{output_dir} already holds an export: pass --overwrite or another --output_dir")
    from keras_ffl.run_dir import check_can_create

    check_can_create(os.path.dirname(os.path.abspath(output_dir)), f"--output_dir {output_dir}: its folder")
    return output_dir


def parity_images(config, count, data_dir=""):
    """The first ``count`` test images of the model's dataset, as float32 pixels."""
    from keras_ffl.config import check_data_dir
    from keras_ffl.data import raw_test_images

    check_data_dir(config.dataset, data_dir or config.resolved_data_dir)
    return raw_test_images(config, count, data_dir)


def export_saved_model(keras_model, path, images):
    import numpy as np
    import tensorflow as tf

    keras_model.export(path, format="tf_saved_model", verbose=False)
    reloaded = tf.saved_model.load(path)
    outputs = np.asarray(reloaded.serve(tf.constant(images)))
    parameters = sum(int(np.prod(v.shape)) for v in reloaded.variables)
    return outputs, parameters


def export_onnx(keras_model, path, images):
    import numpy as np
    import onnx
    import onnxruntime as ort

    with warnings.catch_warnings():  # tf2onnx's own NumPy FutureWarning
        warnings.simplefilter("ignore", FutureWarning)
        keras_model.export(path, format="onnx", verbose=False)
    graph = onnx.load(path).graph
    parameters = sum(int(np.prod(t.dims)) for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images})[0]
    return outputs, parameters


def export_tflite(keras_model, path, images, saved_model_path=None):
    import tensorflow as tf

    if saved_model_path:
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_path)
    else:
        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    with open(path, "wb") as f:
        f.write(converter.convert())
    return run_tflite(path, images), None


def run_tflite(path, images):
    import numpy as np
    import tensorflow as tf

    with warnings.catch_warnings():  # TF's own deprecation notice pointing to ai_edge_litert
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=path)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, images.shape)  # dynamic batch
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, images)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))


def batch1_latency_ms(keras_model, onnx_path, image, runs):
    """Median batch-1 latency of Keras (compiled tf.function) and onnxruntime, in ms."""
    import numpy as np
    import tensorflow as tf

    keras_call = tf.function(lambda x: keras_model(x, training=False))
    timings = {}
    runners = {"keras": lambda: keras_call(image).numpy()}
    if onnx_path:
        import onnxruntime as ort

        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        runners["onnxruntime"] = lambda: session.run(None, {name: image})
    for runtime, run in runners.items():
        for _ in range(10):
            run()
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            run()
            samples.append((time.perf_counter() - start) * 1e3)
        timings[runtime] = round(float(np.median(samples)), 3)
    return timings


def export(source_model, config, part, formats, output_dir, tolerance=1e-4, parity_examples=256, latency_runs=200,
           data_dir="", overwrite=False, source=""):
    """Exports ``part`` of an already-loaded method model; returns the metadata dict.

    Raises ParityError (nothing written) when an artifact disagrees with Keras."""
    import numpy as np

    from keras_ffl.build import part_model
    from keras_ffl.zoo import preprocessing_record

    keras_model = part_model(source_model, config, part, raw_pixels=True)
    images, labels = parity_images(config, parity_examples, data_dir)
    reference = np.asarray(keras_model.predict(images, batch_size=64, verbose=0))
    import re

    from keras_ffl.run_dir import remove_dead_partials

    staging = f"{output_dir.rstrip(os.sep)}.partial{os.getpid()}"
    remove_dead_partials(os.path.dirname(os.path.abspath(staging)),  # what killed exports left
                         re.escape(os.path.basename(output_dir.rstrip(os.sep))) + r"\.partial(?P<pid>\d+)")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    artifacts = {}
    try:
        for fmt in [f for f in FORMATS if f in formats]:  # SavedModel first: TFLite converts from it
            path = os.path.join(staging, ARTIFACTS[fmt])
            if fmt == "saved_model":
                outputs, parameters = export_saved_model(keras_model, path, images)
            elif fmt == "onnx":
                outputs, parameters = export_onnx(keras_model, path, images)
            else:
                saved = os.path.join(staging, ARTIFACTS["saved_model"])
                outputs, parameters = export_tflite(keras_model, path, images, saved if os.path.isdir(saved) else None)
            artifacts[fmt] = {
                "path": ARTIFACTS[fmt],
                "bytes": directory_size(path),
                "max_abs_diff": float(np.max(np.abs(np.asarray(outputs, np.float32) - reference))),
                "same_top1": float(np.mean(np.argmax(outputs, -1) == np.argmax(reference, -1))),
                "parameters": parameters,
            }
        failed = {f: a["max_abs_diff"] for f, a in artifacts.items() if not a["max_abs_diff"] <= tolerance}
        if failed:
            raise ParityError(
                "parity check failed (max abs logit difference against Keras, tolerance "
                f"{tolerance:g}): " + ", ".join(f"{f} {d:.3g}" for f, d in failed.items()) + "; nothing written"
            )
        latency = {}
        if latency_runs:
            onnx_path = os.path.join(staging, ARTIFACTS["onnx"]) if "onnx" in artifacts else None
            latency = batch1_latency_ms(keras_model, onnx_path, images[:1], latency_runs)
        metadata = {
            "source": source,
            "part": part,
            "method": config.method,
            "backbones": config.branch_backbones if not part.startswith("net") else
            [config.branch_backbones[int(part[3:])]],
            "dataset": config.dataset,
            "class_names": config.labels,
            "input": {"name": keras_model.inputs[0].name, "shape": [None, *config.dataset_spec.image_shape],
                      "dtype": "float32"},
            "output": "logits [batch, classes]",
            "preprocessing": {**preprocessing_record(*config.normalization), "in_graph": True},
            "keras_parameters": int(keras_model.count_params()),
            "batchnorm_channels": batchnorm_channels(keras_model),
            "parity": {"examples": int(len(images)), "tolerance": tolerance,
                       "keras_top1_on_these": float(np.mean(np.argmax(reference, -1) == labels))},
            "artifacts": artifacts,
            "batch1_latency_ms": latency,
        }
        atomic_write_text(os.path.join(staging, "metadata.json"), json.dumps(metadata, indent=2) + "\n")
        replace_directory(staging, output_dir, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return metadata


def directory_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def replace_directory(staging, target, overwrite):
    """Moves a finished staging folder into place; an older export survives until then."""
    if os.path.exists(target):
        if os.listdir(target) and not overwrite:
            raise ConfigError(f"{target} already holds an export: pass --overwrite or another --output_dir")
        retired = f"{target.rstrip(os.sep)}.old{os.getpid()}"
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        os.replace(staging, target)


def batchnorm_channels(model):
    """Channels normalised by BatchNorm layers: ONNX and TFLite fold each into the layer before it."""
    import keras

    from keras_ffl import keras_private

    return sum(int(layer.gamma.shape[0]) for layer in keras_private.all_layers(model)
               if isinstance(layer, keras.layers.BatchNormalization) and layer.scale)


def parameter_note(metadata):
    """Why a converted graph counts other numbers than Keras: each BatchNorm folded into the
    convolution before it keeps 1 of its 4 numbers per channel (a bias; Keras counts scale,
    offset, moving mean and variance), and a graph holds a few constants of its own."""
    channels = metadata.get("batchnorm_channels", 0)
    keras_count = metadata["keras_parameters"]
    counts = {a["parameters"] for a in metadata["artifacts"].values() if a["parameters"] not in (None, keras_count)}
    if not counts or not channels:
        return ""
    folded = keras_count - 3 * channels
    lines = []
    for fmt, artifact in metadata["artifacts"].items():
        if artifact["parameters"] in counts:
            extra = artifact["parameters"] - folded
            constants = f", {extra:+,} constants of the graph" if extra else ""
            lines.append(f"{fmt}: {artifact['parameters']:,} parameters = Keras's {keras_count:,} - 3 x {channels:,} "
                         f"(each BatchNorm channel folded into the convolution before it{constants})")
    return "\n".join(lines)


def format_summary(metadata, output_dir):
    lines = [f"exported {metadata['source']} part {metadata['part']} to {output_dir} "
             f"({metadata['keras_parameters']:,} parameters in Keras; parity on {metadata['parity']['examples']} "
             f"real test images)", "",
             "| format | file | size (MB) | parameters | max abs diff vs Keras | same top-1 |",
             "|---|---|---:|---:|---:|---:|"]
    for fmt, a in metadata["artifacts"].items():
        params = f"{a['parameters']:,}" if a["parameters"] is not None else "-"
        lines.append(f"| {fmt} | {a['path']} | {a['bytes'] / 1e6:.2f} | {params} | {a['max_abs_diff']:.2e} | "
                     f"{100 * a['same_top1']:.1f}% |")
    note = parameter_note(metadata)
    if note:
        lines += ["", note]
    if metadata["batch1_latency_ms"]:
        lines.append("")
        lines.append("batch-1 latency (median): " + ", ".join(
            f"{runtime} {ms:.2f} ms" for runtime, ms in metadata["batch1_latency_ms"].items()))
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        fv = parse_argv(argv, define=define_flags)
        source = fv.name or os.path.basename(os.path.normpath(fv.model_dir or ""))
        output_dir = fv.output_dir or os.path.join("exports", f"{source}_{fv.part}")
        if not 0 < fv.tolerance < float("inf"):  # NaN fails this too
            raise ConfigError(f"--tolerance must be a positive finite number, got {fv.tolerance}")
        check_request(fv.name, fv.model_dir, fv.formats, output_dir, fv.overwrite)
        if fv.name:
            from keras_ffl.zoo import load_method_model

            model, config = load_method_model(fv.name, base_url=fv.base_url or None, cache=fv.cache_dir or None)
        else:
            from keras_ffl.build import load_run

            model, config = load_run(fv.model_dir)
        try:
            metadata = export(model, config, fv.part, fv.formats, output_dir, fv.tolerance, fv.parity_examples,
                              fv.latency_runs, fv.data_dir, fv.overwrite, source)
        except ParityError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(format_summary(metadata, output_dir))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
