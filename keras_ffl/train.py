"""Train a method from flags or a flagfile.

    python -m keras_ffl.train --flagfile=zoo/quickstart_fashion_mnist.flags
    python -m keras_ffl.train --method=ffl --backbones=resnet32 --dataset=cifar100

Everything is validated before any work: a bad flag prints one line and exits 2.
The run directory receives config.json, per-epoch checkpoints (resumed automatically
after an interruption), history.csv, TensorBoard logs, the final weights and report.json.
"""

import sys
import time

from keras_ffl import run_dir
from keras_ffl.cli import run_main
from keras_ffl.config import config_from_flags, parse_argv


def parse_config(argv):
    """argv -> validated Config (raises ConfigError)."""
    config = config_from_flags(parse_argv(argv)).validated()
    run_dir.claim(config)
    return config


def run_pretraining(config, extra_callbacks=()):
    """FFCL's first stage: trains the peers alone into ``pretrained_dir`` unless a finished
    run is already there (so rerunning an interrupted FFCL command skips or resumes it)."""
    import os

    stage = config.pretraining_config()
    if stage is None or os.path.exists(run_dir.path(stage.model_dir, run_dir.REPORT)):
        return
    run_dir.claim(stage)
    print(f"Pre-training stage: each peer alone with cross-entropy, into {stage.model_dir}", flush=True)
    train(stage, extra_callbacks)
    print("Pre-training stage done; collaborative training starts", flush=True)


def train(config, extra_callbacks=()):
    """Runs a validated Config to completion (and FFCL's pre-training stage first);
    returns the report dict."""
    import keras

    from keras_ffl.build import build, initialize_from
    from keras_ffl.data import corrupt_records_named
    from keras_ffl.callbacks import (AtomicCheckpoint, EpochVariable, ResumeCheckpoint, Throughput,
                                     save_weights_atomically)
    from keras_ffl.distribute import (cluster_from_flags, configure_devices, distribute_by_data, is_chief,
                                      make_strategy)
    from keras_ffl.methods import METHODS
    from keras_ffl.report import format_table, summarize, write_report

    run_pretraining(config, extra_callbacks)

    configure_devices(config.cpu_devices)
    cluster_from_flags(config.worker_hosts, config.task_index)
    if config.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    strategy = make_strategy(config.strategy, config.cpu_devices)
    chief = is_chief(strategy)
    if chief:
        run_dir.check_writable(config.model_dir)
    keras.utils.set_random_seed(config.seed)

    with strategy.scope():
        model, data = build(config)
    if chief:
        run_dir.check_free_space(config.model_dir, model)
    warm_start = METHODS[config.method].warm_start
    if warm_start:
        warm_start(model, config)
    resuming = run_dir.claim(config)
    if config.init_dir and not resuming:
        initialize_from(model, config.init_dir)
    if chief:
        config.save(run_dir.path(config.model_dir, run_dir.CONFIG))

    throughput = Throughput(config.batch_size)
    resume = ResumeCheckpoint(run_dir.path(config.model_dir, run_dir.BACKUP), write=chief)
    start_epoch = resume.restore(model)
    callbacks = [
        EpochVariable(),
        throughput,
        keras.callbacks.TerminateOnNaN(),
        resume,
    ]
    if chief:
        callbacks += [
            AtomicCheckpoint(run_dir.path(config.model_dir, run_dir.LAST_CHECKPOINT)),
            keras.callbacks.CSVLogger(run_dir.path(config.model_dir, run_dir.HISTORY), append=True),
            keras.callbacks.TensorBoard(run_dir.path(config.model_dir, run_dir.TENSORBOARD), profile_batch=0),
        ]
    callbacks += list(extra_callbacks)

    # The stream starts where the resume checkpoint is, so a resumed epoch sees the same batches.
    train_ds = distribute_by_data(data.train_from(start_epoch))
    if resuming:
        print(f"Resuming the run in {config.model_dir} after epoch {start_epoch}", flush=True)
    print(
        f"{config.method.upper()} on {config.dataset}: {config.num_branches} x "
        f"{'/'.join(config.backbones)} ({config.topology}), {model.count_params():,} parameters, "
        f"{data.train_size} training images, {data.steps_per_epoch} steps/epoch, "
        f"{strategy.num_replicas_in_sync} replica(s)",
        flush=True,
    )
    started = time.time()
    with corrupt_records_named(config):
        history = model.fit(
            train_ds,
            epochs=config.epochs,
            steps_per_epoch=data.steps_per_epoch,
            validation_data=distribute_by_data(data.test) if config.validation_freq else None,
            validation_freq=config.validation_freq or 1,
            callbacks=callbacks,
            verbose=config.verbose,
            shuffle=False,  # the pipeline shuffles; Keras would only warn
        )
    train_seconds = time.time() - started
    if model.stop_training and history.history.get("loss") and not all(
        v == v and abs(v) != float("inf") for v in history.history["loss"]
    ):
        raise FloatingPointError(
            f"training stopped: the loss became NaN or inf; the last good checkpoint is in {config.model_dir}"
        )

    with corrupt_records_named(config):
        metrics = model.evaluate(distribute_by_data(data.test), return_dict=True, verbose=0)
    rows = summarize(metrics, model.part_names)
    report = {
        "config": config.to_dict(),
        "results": rows,
        "test_examples": data.test_size,
        "train_seconds": round(train_seconds, 1),
        "train_img_per_sec": round(throughput.best, 1) if throughput.best else None,
        "parameters": int(model.count_params()),
        "replicas": strategy.num_replicas_in_sync,
    }
    if chief:
        save_weights_atomically(model, run_dir.path(config.model_dir, run_dir.WEIGHTS))
        write_report(run_dir.path(config.model_dir, run_dir.REPORT), report)
    title = f"{config.method.upper()} {'/'.join(config.backbones)} on {config.dataset} ({data.test_size} test images)"
    print(format_table(rows, title), flush=True)
    if report["train_img_per_sec"]:
        print(f"train throughput: {report['train_img_per_sec']:.0f} img/s; wall time {train_seconds:.0f} s")
    print(f"report: {run_dir.path(config.model_dir, run_dir.REPORT)}", flush=True)
    return report


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        train(parse_config(argv))
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
