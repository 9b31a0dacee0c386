"""Evaluate a finished or interrupted run and print its table.

    python -m keras_ffl.evaluate --model_dir=runs/quickstart

The model is rebuilt from model_dir/config.json through the same ``build`` as training,
then the final weights (or the last per-epoch checkpoint) are loaded.
"""

import sys

from absl import flags

from keras_ffl.cli import run_main
from keras_ffl.config import ConfigError
from keras_ffl.command_line import parse_argv


def define_flags(flag_values):
    flags.DEFINE_string("model_dir", None, "Run directory written by keras_ffl.train.", flag_values=flag_values)
    flags.DEFINE_string("weights", "", "Weights file (default: the run's final weights, else last checkpoint).",
                        flag_values=flag_values)
    flags.DEFINE_string("data_dir", "", "Override the run's data location.", flag_values=flag_values)
    flags.DEFINE_integer("test_examples", -1, "Override the number of test examples (0 = all, -1 = as trained).",
                         lower_bound=-1, flag_values=flag_values)
    flags.DEFINE_string("output", "", "Also write the results as JSON here.", flag_values=flag_values)


def evaluate(model_dir, weights="", data_dir="", test_examples=-1):
    """Returns ``(rows, config, test_size)``."""
    from keras_ffl.build import load_run
    from keras_ffl.config import check_data_dir, check_download_possible
    from keras_ffl.data import load_data
    from keras_ffl.report import summarize

    overrides = {"data_dir": data_dir} if data_dir else {}
    if test_examples >= 0:
        overrides["test_examples"] = test_examples
    model, config = load_run(model_dir, weights, run_precision=True, **overrides)
    if not weights:
        note_unfinished(model_dir, config)
    check_data_dir(config.dataset, config.resolved_data_dir)
    check_download_possible(config)
    data = load_data(config, splits=("test",))
    metrics = model.evaluate(data.test, return_dict=True, verbose=0)
    return summarize(metrics, model.part_names), config, data.test_size


def note_unfinished(model_dir, config):
    """A run with no report yet is scored from its last per-epoch checkpoint: say so (stderr)."""
    import os

    from keras_ffl import run_dir

    if os.path.exists(run_dir.path(model_dir, run_dir.REPORT)):
        return
    holder = run_dir.live_holder(model_dir)
    state = (f"still training (process {holder.get('pid', '?')} on {holder.get('host', '?')})" if holder
             else "interrupted")
    done = run_dir.epochs_checkpointed(model_dir)
    used = os.path.relpath(run_dir.find_weights(model_dir), model_dir)
    print(f"note: {model_dir} is an unfinished run, {state}: scoring {used}"
          f"{f' (after epoch {done} of {config.epochs})' if done else ''}", file=sys.stderr, flush=True)


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        from keras_ffl.report import format_table, write_report

        fv = parse_argv(argv, define=define_flags)
        if not fv.model_dir:
            raise ConfigError("--model_dir is required")
        rows, config, test_size = evaluate(fv.model_dir, fv.weights, fv.data_dir, fv.test_examples)
        title = f"{config.method.upper()} {'/'.join(config.backbones)} on {config.dataset} ({test_size} test images)"
        print(format_table(rows, title))
        if fv.output:
            write_report(fv.output, {"results": rows, "test_examples": test_size, "model_dir": fv.model_dir})
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())
