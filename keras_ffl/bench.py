"""Training throughput per method, through the real ``fit`` path, with the reference figures
that say where the time goes.

    python -m keras_ffl.bench --method=ffl --backbones=resnet32 --num_branches=2 --batch_size=128
    python -m keras_ffl.bench --suite                     # every method on ResNet-32-sized nets
    python -m keras_ffl.bench --suite --backend=tensorflow,jax

Each configuration runs in its own Python process (so ``peak_rss_mb`` is its own) on
synthetic CIFAR-shaped data fed by the same tf.data pipeline as training, and reports:

* ``images_per_sec`` / ``step_ms``: ``fit`` after warm-up (median over the timed rounds);
* ``raw_images_per_sec``, ``fit_vs_raw``: the same model's ``train_step`` in a bare
  ``tf.function`` on one resident batch: what ``fit`` and the input pipeline add;
* ``ce_only_images_per_sec``, ``overhead_vs_ce``: the same networks (same trunk sharing)
  trained with cross-entropy alone (``--method=vanilla``): what the distillation costs;
* ``pipeline_images_per_sec``, ``pipeline_vs_step``: the input pipeline alone (shuffle,
  augmentation, normalisation), which must outrun the step;
* ``device``, ``mixed_precision``, ``jit_compile``: what it ran on.

One JSON line per configuration, then a Markdown table.  On a GPU use
``--mixed_precision=mixed_float16 --jit_compile=true``.
"""

import json
import os
import subprocess
import sys
import time

from absl import flags

from keras_ffl.cli import run_main
from keras_ffl.config import Config, ConfigError
from keras_ffl.command_line import define_general_flag, parse_argv
from keras_ffl.methods import registry

def suite():
    """``--suite``: every method that trains from data alone, at batch 128 on ResNet-32-sized
    networks with its own default number of sub-networks (the baseline: one network), as the
    papers use them; the baseline first."""
    declarations = registry.declarations().values()
    ordered = sorted(declarations, key=lambda d: not d.BASELINE)
    return tuple(dict(method=d.NAME, backbones=("resnet32",), num_branches=d.MIN_BRANCHES if d.BASELINE else
                      d.DEFAULT_BRANCHES) for d in ordered if d.STANDALONE)


def define_flags(flag_values):
    # The settings a training run has too: train's own flags (help, default, choices).
    for name in ("method", "backbones", "num_branches", "topology", "batch_size", "mixed_precision", "jit_compile"):
        define_general_flag(name, flag_values)
    flags.DEFINE_integer("steps", 10, "Timed steps per epoch.", flag_values=flag_values)
    flags.DEFINE_integer("epochs", 4, "Rounds of `steps` steps each; the first one is warm-up.",
                         flag_values=flag_values)
    flags.DEFINE_bool("suite", False, "Every method on ResNet-32-sized networks (ignores method/backbones).",
                      flag_values=flag_values)
    flags.DEFINE_bool("reference", True, "Also time the raw step, CE-only training and the input pipeline.",
                      flag_values=flag_values)
    flags.DEFINE_list("backend", [], "Keras backend(s) to time, e.g. tensorflow,jax (default: $KERAS_BACKEND, else "
                      "tensorflow).", flag_values=flag_values)
    flags.DEFINE_enum("compare", "", ["", "torch"], "torch: also time, in the same rounds and on the same batch, "
                      "the PyTorch step of the same networks and loss (keras_ffl.torch_reference: the authors' code; "
                      "channels_last, bfloat16 autocast under --mixed_precision=mixed_bfloat16) and print the ratios.",
                      flag_values=flag_values)
    flags.DEFINE_integer("project_epochs", 0, "Also print how long a run of this many epochs of --project_examples "
                         "images would take at the measured fit speed (300 and 50000: the papers' CIFAR-100 runs).",
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_integer("project_examples", 50000, "Training images per epoch of the projected run.", lower_bound=1,
                         flag_values=flag_values)
    flags.DEFINE_bool("convolutions", False, "Instead: time one 3x3 convolution's forward and backward pass at each "
                      "ResNet-32 stage's shape (--batch_size images) in TensorFlow (a tf.function) and in JAX (jax.jit) "
                      "in alternating rounds of one process, and print the ratio: where Keras on JAX loses on a CPU.",
                      flag_values=flag_values)
    flags.DEFINE_string("output", "", "Also write the JSON lines to this file.", flag_values=flag_values)
    flags.DEFINE_string("child", "", "(internal) one configuration as JSON, measured in this process.",
                        flag_values=flag_values)


def bench_config(method, backbones, num_branches, batch_size, steps, topology="auto", mixed_precision="none",
                 jit_compile="auto", backend=""):
    """A validated Config on synthetic CIFAR-shaped data, sized for ``steps`` steps an epoch."""
    return Config(
        method=method, backbones=tuple(backbones), num_branches=num_branches, topology=topology,
        dataset="synthetic", train_examples=batch_size * steps, test_examples=batch_size,
        batch_size=batch_size, eval_batch_size=batch_size, epochs=1, lr_milestones=(), rampup_epochs=0,
        mixed_precision=mixed_precision, jit_compile=jit_compile, verbose=0, validation_freq=0,
        model_dir=os.devnull, backend=backend,
    ).validated(check_data=False)


def ce_only_config(config):
    """The same networks, sharing the same trunk, trained with cross-entropy alone."""
    return bench_config(registry.baseline(), config.backbones, config.num_branches, config.batch_size,
                        max(config.train_examples // config.batch_size, 1), config.topology,
                        config.mixed_precision, config.jit_compile, config.backend)


def build_for_timing(config):
    import keras

    from keras_ffl.build import build

    keras.utils.set_random_seed(0)
    return build(config)


def fit_epoch(model, data, config):
    """One ``fit`` epoch; returns its images/s after the first (compiling) batch."""
    from keras_ffl.callbacks import EpochVariable, Throughput

    throughput = Throughput(config.batch_size, warmup_steps=1)  # the function is compiled in round 0
    model.fit(data.train, epochs=1, steps_per_epoch=data.steps_per_epoch, verbose=0,
              callbacks=[EpochVariable(), throughput])
    return throughput.history[-1]


def raw_step_timer(model, data):
    """The model's own train_step, compiled bare (a tf.function, or jax.jit of the stateless
    step), on one resident batch."""
    import keras

    batch = next(iter(data.train))
    if keras.backend.backend() == "jax":
        return jax_raw_step_timer(model, batch)
    import tensorflow as tf

    step = tf.function(model.train_step, jit_compile=bool(model.jit_compile))

    def run(steps):
        start = time.perf_counter()
        for _ in range(steps):
            logs = step(batch)
        float(logs["loss"])  # wait for the last step
        return steps * int(batch[0].shape[0]) / (time.perf_counter() - start)

    return run


def jax_raw_step_timer(model, batch):
    import jax

    # Copies: the step donates its state, and the model's own values must survive for fit.
    state = [[jax.numpy.array(v.value, copy=True) for v in variables]
             for variables in (model.trainable_variables, model.non_trainable_variables, model.optimizer.variables,
                               model.metrics_variables)]
    step = jax.jit(model.train_step, donate_argnums=0)
    batch = jax.tree_util.tree_map(jax.numpy.asarray, tuple(batch))

    def run(steps):
        nonlocal state
        start = time.perf_counter()
        for _ in range(steps):
            logs, state = step(state, batch)
        jax.block_until_ready(logs["loss"])
        return steps * int(batch[0].shape[0]) / (time.perf_counter() - start)

    return run


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def time_pipeline(data, batches):
    import itertools

    start = time.perf_counter()
    count = 0
    for _, labels in itertools.islice(iter(data.train), batches):  # inputs may be a dict (views, indices)
        count += int(labels.shape[0])
    return count / (time.perf_counter() - start)


def device_name():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return f"CPU ({os.cpu_count()} cores)" if device.platform == "cpu" else \
            f"{jax.device_count()} x {device.device_kind}"
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    return f"CPU ({os.cpu_count()} cores)"


def torch_timer(config, data):
    """The PyTorch step of the method's paper code on the first training batch (the method's
    declaration builds it), or ``(None, why)``."""
    import numpy as np

    inputs, labels = next(iter(data.train))
    images = inputs["images"] if isinstance(inputs, dict) else inputs
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    torch.manual_seed(0)
    step = config.options.torch_reference_step(config, np.asarray(images), np.asarray(labels),
                                               bfloat16=config.mixed_precision == "mixed_bfloat16")
    if step is None:
        return None, f"no PyTorch reference of --method={config.method} on {'+'.join(config.branch_backbones)}"
    setup = "channels_last" + (", bfloat16 autocast" if step.bfloat16 else "")
    setup += f", on {torch.cuda.get_device_name()}" if step.device == "cuda" else f", {torch.get_num_threads()} threads"
    return step, setup


def measure(config, epochs, reference=True, compare=""):
    """Every figure for one configuration, in this process.

    The method, its raw step, the CE-only networks and (``compare="torch"``) the PyTorch step
    are timed in alternating rounds (the first one warm-up), so a machine that speeds up or
    slows down affects them all alike."""
    import resource

    import keras
    import numpy as np

    if config.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    steps = config.train_examples // config.batch_size
    model, data = build_for_timing(config)
    if reference:
        raw_step = raw_step_timer(model, data)
        baseline_config = ce_only_config(config)
        baseline, baseline_data = build_for_timing(baseline_config)
    torch_step, torch_setup = torch_timer(config, data) if compare == "torch" else (None, "")
    fit_rates, raw_rates, ce_rates, torch_rates = [], [], [], []
    for _ in range(epochs):
        fit_rates.append(fit_epoch(model, data, config))
        if reference:
            raw_rates.append(raw_step(steps))
            ce_rates.append(fit_epoch(baseline, baseline_data, baseline_config))
        if torch_step is not None:
            torch_rates.append(torch_step.images_per_sec(steps))
    images_per_sec = median(fit_rates[1:])
    result = {
        "method": config.method,
        "backbones": "+".join(config.branch_backbones),
        "num_branches": config.num_branches,
        "topology": config.topology,
        "batch_size": config.batch_size,
        "images_per_sec": round(images_per_sec, 1),
        "step_ms": round(1000 * config.batch_size / images_per_sec, 1),
        "parameters": int(model.count_params()),
    }
    if reference:
        raw, ce_only = median(raw_rates[1:]), median(ce_rates[1:])
        pipeline = time_pipeline(data, max(4 * steps, 20))
        result.update({
            "raw_images_per_sec": round(raw, 1),
            "fit_vs_raw": round(images_per_sec / raw, 3),
            "ce_only_images_per_sec": round(ce_only, 1),
            "overhead_vs_ce": round(ce_only / images_per_sec - 1.0, 3),
            "pipeline_images_per_sec": round(pipeline, 1),
            "pipeline_vs_step": round(pipeline / images_per_sec, 1),
        })
    if compare == "torch":
        result["torch_setup"] = torch_setup
    if torch_step is not None:  # the same networks: as many weights trained on each side
        result["trainable_parameters"] = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
        result["torch_parameters"] = sum(p.numel() for p in torch_step.model.parameters())
    if torch_rates:
        torch_rate = median(torch_rates[1:])
        result.update({"torch_images_per_sec": round(torch_rate, 1),
                       "fit_vs_torch": round(images_per_sec / torch_rate, 3)})
        if reference:
            result["raw_vs_torch"] = round(result["raw_images_per_sec"] / torch_rate, 3)
    result.update({
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": device_name(),
        "backend": keras.backend.backend(),
        "mixed_precision": config.mixed_precision,
        "jit_compile": config.jit_compile,
    })
    return result


def projection(result, epochs, examples):
    """Hours a run of ``epochs`` epochs of ``examples`` images takes at the measured fit (and
    PyTorch step) speed; evaluation passes excluded."""
    images = epochs * examples
    out = {"projected_epochs": epochs, "projected_hours": round(images / result["images_per_sec"] / 3600, 2)}
    if "torch_images_per_sec" in result:
        out["torch_projected_hours"] = round(images / result["torch_images_per_sec"] / 3600, 2)
    return out


def run_child(config, epochs, reference, compare=""):
    """Measures one configuration in a fresh interpreter; returns its result dict."""
    payload = json.dumps({"config": config.to_dict(), "epochs": epochs, "reference": reference, "compare": compare})
    env = dict(os.environ, KERAS_BACKEND=config.backend)
    proc = subprocess.run([sys.executable, "-m", "keras_ffl.bench", f"--child={payload}"], capture_output=True,
                          text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"benchmark of {config.method} failed: {tail}")
    return json.loads(lines[-1])


def format_table(results):
    columns = [("backend", "backend"), ("method", "method"), ("backbones", "networks"), ("topology", "topology"),
               ("batch_size", "batch"),
               ("images_per_sec", "img/s (fit)"), ("step_ms", "step ms"), ("raw_images_per_sec", "raw img/s"),
               ("fit_vs_raw", "fit/raw"), ("ce_only_images_per_sec", "CE-only img/s"),
               ("overhead_vs_ce", "overhead vs CE"), ("pipeline_vs_step", "pipeline/step"),
               ("torch_images_per_sec", "PyTorch img/s"), ("fit_vs_torch", "fit/PyTorch"),
               ("raw_vs_torch", "raw/PyTorch"), ("projected_hours", "projected h"),
               ("torch_projected_hours", "PyTorch projected h"), ("peak_rss_mb", "peak RSS MB")]
    columns = [(k, h) for k, h in columns if any(k in r for r in results)]
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        cells = []
        for key, _ in columns:
            value = r.get(key, "-")
            if key == "overhead_vs_ce" and value != "-":
                value = f"{100 * value:+.0f}%"
            cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    device = results[0]["device"] if results else ""
    notes = sorted({r["torch_setup"] for r in results if r.get("torch_setup")})
    compared = f"\nPyTorch step: {'; '.join(notes)}" if notes else ""
    projected = next((f"\nprojected: {r['projected_epochs']} epochs at the fit speed above" for r in results
                      if "projected_epochs" in r), "")
    return "\n".join(lines) + f"\n\ndevice: {device}{compared}{projected}"


#: (height, width, channels) of a ResNet-32 stage's 3x3 convolutions on 32x32 images.
RESNET32_CONVOLUTIONS = ((32, 32, 16), (16, 16, 32), (8, 8, 64))


def time_convolutions(batch_size, rounds, repeats=5):
    """``[{shape, tensorflow_ms, jax_ms, jax_vs_tensorflow}]``: one 3x3 convolution (SAME, NHWC),
    ReLU and a squared sum, differentiated with respect to input and kernel, per stage shape;
    the median over ``rounds`` alternating rounds (the first warm-up) of ``repeats`` calls."""
    import jax
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def jax_loss(x, kernel):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.numpy.sum(jax.numpy.maximum(y, 0.0) ** 2)

    jax_step = jax.jit(jax.grad(jax_loss, argnums=(0, 1)))

    @tf.function
    def tensorflow_step(x, kernel):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            loss = tf.reduce_sum(tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME")) ** 2)
        return tape.gradient(loss, [x, kernel])

    def milliseconds(step, args, wait):
        start = time.perf_counter()
        for _ in range(repeats):
            out = step(*args)
        wait(out)
        return 1000 * (time.perf_counter() - start) / repeats

    tf_device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    results = []
    for height, width, channels in RESNET32_CONVOLUTIONS:
        x = rng.normal(size=(batch_size, height, width, channels)).astype("float32")
        kernel = rng.normal(size=(3, 3, channels, channels)).astype("float32")
        tf_args, jax_args = (tf.constant(x), tf.constant(kernel)), (jax.numpy.asarray(x), jax.numpy.asarray(kernel))
        tf_times, jax_times = [], []
        for _ in range(rounds):
            tf_times.append(milliseconds(tensorflow_step, tf_args, lambda out: float(out[1][0, 0, 0, 0])))
            jax_times.append(milliseconds(jax_step, jax_args, jax.block_until_ready))
        tf_ms, jax_ms = median(tf_times[1:]), median(jax_times[1:])
        results.append({"convolution": f"{batch_size}x{height}x{width}x{channels} -> {channels}, 3x3",
                        "tensorflow_ms": round(tf_ms, 3), "jax_ms": round(jax_ms, 3),
                        "jax_vs_tensorflow": round(tf_ms / jax_ms, 3),
                        "device": f"TensorFlow on {tf_device}, JAX on {jax.devices()[0].device_kind}"})
    return results


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        fv = parse_argv(argv, define=define_flags)
        if fv.child:
            from keras_ffl.backend import import_quietly

            request = json.loads(fv.child)
            config = Config.from_dict(request["config"]).validated(check_data=False)
            import_quietly(config.backend)
            print(json.dumps(measure(config, request["epochs"], request["reference"], request.get("compare", ""))),
                  flush=True)
            return 0
        if fv.batch_size <= 0 or fv.steps <= 0 or fv.epochs < 2:
            raise ConfigError("--batch_size and --steps must be positive and --epochs >= 2 (one is warm-up)")
        if fv.convolutions:
            from keras_ffl.backend import installed, quiet_tensorflow

            missing = [name for name in ("tensorflow", "jax") if not installed(name)]
            if missing:
                raise ConfigError(f"--convolutions compares TensorFlow with JAX: {' and '.join(missing)} not installed")
            quiet_tensorflow()
            results = time_convolutions(fv.batch_size, fv.epochs)
            for result in results:
                print(json.dumps(result), flush=True)
            print("\n| convolution (forward + backward) | TensorFlow ms | JAX ms | JAX speed / TensorFlow's |\n|---|---:|---:|---:|")
            for r in results:
                print(f"| {r['convolution']} | {r['tensorflow_ms']} | {r['jax_ms']} | {r['jax_vs_tensorflow']} |")
            return 0
        from keras_ffl.backend import resolve

        backends = [resolve(b) for b in fv.backend] if fv.backend else [resolve()]
        common = dict(batch_size=fv.batch_size, steps=fv.steps, mixed_precision=fv.mixed_precision,
                      jit_compile=fv.jit_compile)
        specs = suite() if fv.suite else (dict(method=fv.method, backbones=tuple(fv.backbones),
                                             num_branches=fv.num_branches, topology=fv.topology),)
        # Every configuration validated before any work; backends alternate per method.
        configs = [bench_config(**spec, **common, backend=b) for spec in specs for b in backends]
        results = []
        for config in configs:
            result = run_child(config, fv.epochs, fv.reference, fv.compare)
            if fv.project_epochs:
                result.update(projection(result, fv.project_epochs, fv.project_examples))
            print(json.dumps(result), flush=True)
            results.append(result)
            if fv.output:
                with open(fv.output, "a") as f:
                    f.write(json.dumps(result) + "\n")
        print()
        print(format_table(results))
        return 0

    return run_main(body, backend_from_flags=True)


if __name__ == "__main__":
    sys.exit(main())
