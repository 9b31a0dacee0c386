"""Train a method from flags or a flagfile.

    python -m keras_ffl.train --flagfile=zoo/quickstart_fashion_mnist.flags
    python -m keras_ffl.train --flagfile=res32_cifar100          # a paper setting by its zoo name
    python -m keras_ffl.train --method=ffl --backbones=resnet32 --dataset=cifar100 --backend=jax

Everything is validated before any work, and before TensorFlow or JAX is imported: a bad flag,
a model_dir holding another run, an unwritable model_dir or one in use by a live run prints
one line and exits 2.  The run directory receives config.json, per-epoch checkpoints (resumed
automatically after an interruption), history.csv, TensorBoard logs, the final weights and
report.json.
"""

import os
import sys
import time

from keras_ffl import backend, run_dir
from keras_ffl.cli import run_main
from keras_ffl.config import check_download_possible
from keras_ffl.command_line import config_from_flags, parse_argv
from keras_ffl.errors import HelpRequested, UsageError

USAGE = """usage: python -m keras_ffl.train --flagfile=SETTING [--flag=value ...]
       python -m keras_ffl.train --method=NAME [--flag=value ...]

Start from one of these:
  python -m keras_ffl.train --flagfile=quickstart_fashion_mnist
      FFL, two ResNet-8 on 10,000 Fashion-MNIST images: 1-2.5 minutes on 2 CPU cores
  python -m keras_ffl.train --flagfile=res32_cifar100
      a paper's setting by its zoo name (the .flags files in zoo/; a path works too)
  python -m keras_ffl.train --flagfile=quickstart_fashion_mnist --dataset=folder --data_dir=DIR
      your own images, DIR/train/<class>/* and DIR/test/<class>/* (or --validation_fraction=0.1)

Every flag, with the methods' own settings: python -m keras_ffl.train --help"""

#: The sign that a command names what to train (a bare command would start a 300-epoch run).
STARTING_FLAGS = ("--flagfile", "-flagfile", "--method", "-method")


def parse_config(argv):
    """argv -> validated Config (raises ConfigError; UsageError when it names neither a
    flagfile nor a method; HelpRequested with the starting points first)."""
    try:
        flag_values = parse_argv(argv)
    except HelpRequested as e:
        raise HelpRequested(USAGE.replace("\n\nEvery flag", "\n\nFlags").rsplit("\n\n", 1)[0] + "\n\n"
                            + str(e).split("\n\n", 1)[-1].lstrip("\n")) from None
    if not any(arg.split("=")[0] in STARTING_FLAGS for arg in argv[1:]):
        raise UsageError(USAGE)
    config = config_from_flags(flag_values).validated()
    check_download_possible(config)
    run_dir.claim(config)
    return config


def run_pretraining(config, extra_callbacks=()):
    """The method's first stage, if it has one (FFCL's peers alone, into its pretrained_dir),
    unless a finished run is already there (so rerunning an interrupted command skips or
    resumes it)."""
    import os

    stage = config.pretraining_config()
    if stage is None or os.path.exists(run_dir.path(stage.model_dir, run_dir.REPORT)):
        return
    run_dir.claim(stage)
    from keras_ffl.methods import registry

    print(f"Pre-training stage, {registry.get(stage.method).TITLE}, into {stage.model_dir}", flush=True)
    train(stage, extra_callbacks)
    print("Pre-training stage done; collaborative training starts", flush=True)


def logging_callbacks(config):
    """The chief's logs: history.csv and TensorBoard."""
    import keras

    callbacks = [keras.callbacks.CSVLogger(run_dir.path(config.model_dir, run_dir.HISTORY), append=True)]
    if backend.installed("tensorflow"):  # Keras's TensorBoard writes through tf.summary
        callbacks.append(keras.callbacks.TensorBoard(run_dir.path(config.model_dir, run_dir.TENSORBOARD),
                                                     profile_batch=0))
    return callbacks


def train(config, extra_callbacks=()):
    """Runs a validated Config to completion (and the method's pre-training stage first);
    returns the report dict."""
    backend.activate(config.backend)
    backend.prepare_jax(config.backend, config.cpu_devices, config.mixed_precision)
    writer = run_dir.writes_here(config)
    if writer:
        run_dir.check_writable(config.model_dir)
    with run_dir.locked(config.model_dir) if writer else _nothing():
        if writer:  # temporary files of writes a kill interrupted
            run_dir.remove_leftovers(config.model_dir)
        backend.import_quietly(config.backend)
        return _train(config, extra_callbacks)


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _train(config, extra_callbacks):
    import keras

    from keras_ffl.build import build, initialize_from, warm_start
    from keras_ffl.callbacks import (AtomicCheckpoint, ResumeCheckpoint, Throughput, progress_callbacks,
                                     save_weights_in_step)
    from keras_ffl.data import corrupt_records_named
    from keras_ffl.distribute import make_distribution
    from keras_ffl.report import format_table, summarize, write_report

    run_pretraining(config, extra_callbacks)
    distribution = make_distribution(config)
    if config.mixed_precision != "none":
        from keras_ffl.build import set_precision

        set_precision(config.mixed_precision)
    chief = distribution.is_chief
    keras.utils.set_random_seed(config.seed)

    with distribution.scope():
        model, data = build(config, shard=distribution.process)
    config = data.config  # with what the data told (your own data's classes and statistics)
    if chief:
        run_dir.check_free_space(config.model_dir, model)
    warm_start(model, config)
    resuming = run_dir.claim(config)
    if config.init_dir and not resuming:
        initialize_from(model, config.init_dir)
    if chief:
        config.save(run_dir.path(config.model_dir, run_dir.CONFIG))

    throughput = Throughput(config.batch_size)
    join = distribution.saves_are_collective
    # The resume checkpoints outlive fit: they are removed once the final weights and the report
    # are written, so a run killed in between resumes after its last epoch instead of retraining.
    resume = ResumeCheckpoint(run_dir.path(config.model_dir, run_dir.BACKUP), write=chief, join=join,
                              delete_checkpoint=False)
    start_epoch = resume.restore(model)
    if chief:  # one row per finished epoch: rows past the resume point (or torn) are trained again
        run_dir.trim_history(config.model_dir, start_epoch)
    last = AtomicCheckpoint(run_dir.path(config.model_dir, run_dir.LAST_CHECKPOINT), write=chief, join=join)
    callbacks = [*config.options.callbacks(config, data), throughput, keras.callbacks.TerminateOnNaN()]
    if chief:  # an epoch's history row is written before its checkpoints: a kill between them leaves
        callbacks += logging_callbacks(config)  # a row the resume trims, never a missing one
    callbacks += [resume, last]
    callbacks += list(extra_callbacks)
    shown, fit_verbose = progress_callbacks(config.verbose, sys.stdout.isatty())
    callbacks += shown

    # The stream starts where the resume checkpoint is, so a resumed epoch sees the same batches.
    train_stream = distribution.feed(data.train_from(start_epoch))
    if resuming:
        print(f"Resuming the run in {config.model_dir} after epoch {start_epoch}", flush=True)
    print(
        f"{config.method.upper()} on {config.dataset}: {config.num_branches} x "
        f"{'/'.join(config.backbones)} ({config.topology}), {model.count_params():,} parameters, "
        f"{data.train_size} training images, {data.steps_per_epoch} steps/epoch, "
        f"{distribution.num_replicas} replica(s), Keras on {keras.backend.backend()}",
        flush=True,
    )
    started = time.time()
    with corrupt_records_named(config):
        history = model.fit(
            train_stream,
            epochs=config.epochs,
            steps_per_epoch=data.steps_per_epoch,
            validation_data=distribution.feed(data.test) if config.validation_freq else None,
            validation_freq=config.validation_freq or 1,
            callbacks=callbacks,
            verbose=fit_verbose,
            shuffle=False,  # the stream is shuffled already
        )
    train_seconds = time.time() - started
    if resume.diverged or (model.stop_training and history.history.get("loss") and not all(
        v == v and abs(v) != float("inf") for v in history.history["loss"]
    )):
        raise FloatingPointError(divergence_message(config, resume))

    with corrupt_records_named(config):
        metrics = model.evaluate(distribution.feed(data.test), return_dict=True, verbose=0)
    rows = summarize(metrics, model.part_names)
    report = {
        "config": config.to_dict(),
        "results": rows,
        "test_examples": data.test_size,
        "train_seconds": round(train_seconds, 1),
        "train_img_per_sec": round(throughput.best, 1) if throughput.best else None,
        "parameters": int(model.count_params()),
        "replicas": distribution.num_replicas,
        "backend": keras.backend.backend(),
        "class_names": config.labels,
    }
    for split in ("train", "test"):  # what the run used of each class (in-memory datasets)
        counts = getattr(config, f"{split}_class_counts")
        if counts:
            report[f"{split}_examples_per_class"] = dict(zip(config.labels, counts))
    save_weights_in_step(model, run_dir.path(config.model_dir, run_dir.WEIGHTS), chief, join)
    if chief:
        write_report(run_dir.path(config.model_dir, run_dir.REPORT), report)
    resume.delete()
    title = f"{config.method.upper()} {'/'.join(config.backbones)} on {config.dataset} ({data.test_size} test images)"
    print(format_table(rows, title), flush=True)
    if report["train_img_per_sec"]:
        print(f"train throughput: {report['train_img_per_sec']:.0f} img/s; wall time {train_seconds:.0f} s")
    print(f"report: {run_dir.path(config.model_dir, run_dir.REPORT)}", flush=True)
    return report


def divergence_message(config, resume):
    """What a diverged run tells: in which epoch, and the last good checkpoint when there is one."""
    where = f" in epoch {resume.diverged_epoch + 1}" if resume.diverged_epoch is not None else ""
    found = resume.checkpoints()
    if found:
        epochs, path = found[0]
        return (f"training stopped: the loss or the weights became NaN or inf{where}; the last good checkpoint is "
                f"in {config.model_dir}: {os.path.relpath(path, config.model_dir)} (after epoch {epochs})")
    return (f"training stopped: the loss or the weights became NaN or inf{where}, before any epoch ended with "
            f"finite weights: no checkpoint was saved in {config.model_dir} (try a lower --lr)")


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        train(parse_config(argv))
        return 0

    return run_main(body, backend_from_flags=True)


if __name__ == "__main__":
    sys.exit(main())
