"""Rerun vanilla and every method on real data over several seeds; write a table and figures.

    python -m keras_ffl.reproduce --suite=fashion_mnist                 # about 30 minutes on 2 cores
    python -m keras_ffl.reproduce --suite=fashion_mnist --methods=vanilla,ffl --seeds=0,1

The budget is fixed and fits a CPU: each method's Fashion-MNIST quickstart flagfile (ResNet-8
networks, the same optimiser and schedule shape), on the first 5,000 training images for 4
epochs (lr x0.1 at epoch 3, ramp-up over 1 epoch), tested on all 10,000 test images.  Each
(method, seed) is an ordinary training run in ``<output_dir>/runs/<method>_seed<k>``: a
finished one is reused, an interrupted one resumes, so the command can be rerun.

Writes ``results.json`` (every run's rows, then mean and sample std over seeds),
``results.md`` (the table), ``curves.png`` (test accuracy per epoch, mean over seeds) and
``bars.png`` (each method's rows against the baseline).
"""

import json
import os
import sys

from absl import flags

from keras_ffl.cli import run_main
from keras_ffl.config import ConfigError
from keras_ffl.command_line import config_from_flags, parse_argv
from keras_ffl.files import atomic_write_text
from keras_ffl.methods import registry

def quickstart_methods():
    """method -> (flagfile, extra flags): every method that trains from data alone, by its
    quickstart setting and the flags it adds under a short budget (its declaration's);
    the baseline first: every other row is compared with it."""
    declarations = sorted(registry.declarations().values(), key=lambda d: not d.BASELINE)
    return {d.NAME: (d.QUICKSTART_FLAGFILE, list(d.SHORT_BUDGET_FLAGS)) for d in declarations
            if d.STANDALONE and d.QUICKSTART_FLAGFILE}


SUITES = {
    "fashion_mnist": {
        "budget": ["--train_examples=5000", "--epochs=4", "--lr_milestones=3", "--verbose=0"],
        "methods": quickstart_methods(),
    },
}


def define_flags(flag_values):
    flags.DEFINE_enum("suite", "fashion_mnist", list(SUITES), "Which suite.", flag_values=flag_values)
    flags.DEFINE_list("methods", [], "Subset of the suite's methods (default: all).", flag_values=flag_values)
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (at least one; three for a std).", flag_values=flag_values)
    flags.DEFINE_string("output_dir", "", "Where runs, results and figures go (default runs/reproduce/<suite>).",
                        flag_values=flag_values)
    flags.DEFINE_list("extra", [], "Flags added to every run, e.g. --extra=--train_examples=512,--epochs=1.",
                      flag_values=flag_values)


def run_configs(suite, methods, seeds, output_dir, extra=()):
    """Validated Config per (method, seed), before anything runs."""
    spec = SUITES[suite]
    configs = {}
    for method in methods:
        flagfile, method_flags = spec["methods"][method]
        for seed in seeds:
            argv = ["reproduce", f"--flagfile={flagfile}", *spec["budget"], *method_flags,
                    *extra, f"--seed={seed}", f"--model_dir={os.path.join(output_dir, 'runs', f'{method}_seed{seed}')}"]
            configs[(method, seed)] = config_from_flags(parse_argv(argv)).validated()
    return configs


def summarize_runs(reports):
    """``reports``: {(method, seed): report} -> {method: {row: {mean, std, values}}}."""
    import numpy as np

    table = {}
    for (method, _), report in reports.items():
        for row, values in report["results"].items():
            table.setdefault(method, {}).setdefault(row, []).append(values["top1"])
    return {
        method: {
            row: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                  "values": [round(x, 2) for x in v]}
            for row, v in rows.items()
        }
        for method, rows in table.items()
    }


def teacher_row(rows):
    extra = [r for r in rows if not r.startswith("net") and r not in ("S-avg", "ensemble")
             and not r.startswith("pretrained")]
    return extra[0] if extra else None


def markdown(summary, seeds, test_examples):
    baseline = registry.baseline()
    lines = [f"Top-1 accuracy (%) on {test_examples} Fashion-MNIST test images, mean ± std over seeds "
             f"{', '.join(map(str, seeds))}", "",
             f"| method | sub-networks | S-avg | ensemble | fused / teacher | S-avg vs {baseline} |",
             "|---|---|---:|---:|---:|---:|"]
    baseline_s_avg = summary.get(baseline, {}).get("S-avg", {}).get("mean")

    def cell(stat):
        return f"{stat['mean']:.2f} ± {stat['std']:.2f}" if stat else "-"

    for method, rows in summary.items():
        nets = ", ".join(f"{rows[r]['mean']:.2f}" for r in rows if r.startswith("net"))
        teacher = teacher_row(rows)
        delta = (f"{rows['S-avg']['mean'] - baseline_s_avg:+.2f}" if baseline_s_avg is not None and method != baseline
                 else "-")
        lines.append(f"| {method} | {nets} | {cell(rows['S-avg'])} | {cell(rows['ensemble'])} | "
                     f"{cell(rows[teacher]) + f' ({teacher})' if teacher else '-'} | {delta} |")
    return "\n".join(lines)


def read_curves(configs):
    """{method: [mean over seeds of the per-epoch test S-avg]} from each run's history.csv."""
    import csv

    import numpy as np

    curves = {}
    for (method, _), config in configs.items():
        path = os.path.join(config.model_dir, "history.csv")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            rows = list(csv.DictReader(f))
        nets = [k for k in (rows[0] if rows else {}) if k.startswith("val_acc_net")]
        if nets:
            curves.setdefault(method, []).append([100 * np.mean([float(r[k]) for k in nets]) for r in rows])
    return {m: np.mean(np.array([c[-min(map(len, cs)):] for c in cs]), axis=0).tolist() for m, cs in curves.items()}


def plot(summary, curves, output_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4))
    # tab20's dark shades first, then its light ones: up to 20 methods, no two alike.
    palette = plt.get_cmap("tab20").colors
    colors = palette[0::2] + palette[1::2]
    for i, (method, curve) in enumerate(curves.items()):
        ax.plot(range(1, len(curve) + 1), curve, marker="os^Dv"[i // 10 % 5], color=colors[i % 20], label=method)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("test top-1 of the sub-networks, S-avg (%)")
    ax.set_title("Fashion-MNIST, mean over seeds")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    save(fig, os.path.join(output_dir, "curves.png"))

    methods = list(summary)
    kinds = [("S-avg", "S-avg"), ("ensemble", "ensemble"), ("teacher", "fused / teacher")]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.27
    for i, (kind, label) in enumerate(kinds):
        means, stds = [], []
        for method in methods:
            row = teacher_row(summary[method]) if kind == "teacher" else kind
            stat = summary[method].get(row) if row else None
            means.append(stat["mean"] if stat else np.nan)
            stds.append(stat["std"] if stat else 0.0)
        ax.bar(np.arange(len(methods)) + (i - 1) * width, means, width, yerr=stds, capsize=2, label=label)
    baseline = registry.baseline()
    if baseline in summary:
        ax.axhline(summary[baseline]["S-avg"]["mean"], color="black", linestyle="--", linewidth=1, label=baseline)
    values = [s["mean"] for rows in summary.values() for s in rows.values()]
    ax.set_ylim(min(values) - 2, max(values) + 1)
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"Against {baseline} (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=4, loc="lower center")
    save(fig, os.path.join(output_dir, "bars.png"))


def save(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def reproduce(suite, methods, seeds, output_dir, extra=()):
    from keras_ffl import run_dir
    from keras_ffl.train import train

    configs = run_configs(suite, methods, seeds, output_dir, extra)
    reports = {}
    for key, config in configs.items():
        report_path = run_dir.path(config.model_dir, run_dir.REPORT)
        if not os.path.exists(report_path):
            run_dir.claim(config)
            print(f"== {key[0]}, seed {key[1]} -> {config.model_dir}", flush=True)
            train(config)
        with open(report_path) as f:
            reports[key] = json.load(f)
    summary = summarize_runs(reports)
    test_examples = next(iter(reports.values()))["test_examples"]
    table = markdown(summary, seeds, test_examples)
    results = {"suite": suite, "seeds": seeds, "test_examples": test_examples,
               "budget": SUITES[suite]["budget"] + list(extra), "summary": summary,
               "runs": {f"{m}_seed{s}": r["results"] for (m, s), r in reports.items()}}
    atomic_write_text(os.path.join(output_dir, "results.json"), json.dumps(results, indent=2) + "\n")
    atomic_write_text(os.path.join(output_dir, "results.md"), table + "\n")
    plot(summary, read_curves(configs), output_dir)
    return results, table


def main(argv=None):
    argv = sys.argv if argv is None else argv

    def body():
        fv = parse_argv(argv, define=define_flags)
        spec = SUITES[fv.suite]
        methods = fv.methods or list(spec["methods"])
        unknown = [m for m in methods if m not in spec["methods"]]
        if unknown:
            raise ConfigError(f"--methods: {', '.join(unknown)} not in the {fv.suite} suite "
                              f"({', '.join(spec['methods'])})")
        try:
            seeds = [int(s) for s in fv.seeds]
        except ValueError:
            raise ConfigError(f"--seeds must be integers, got {','.join(fv.seeds)}") from None
        if not seeds:
            raise ConfigError("--seeds is empty")
        output_dir = fv.output_dir or os.path.join("runs", "reproduce", fv.suite)
        _, table = reproduce(fv.suite, methods, seeds, output_dir, fv.extra)
        print(table)
        print(f"\nwrote {output_dir}/results.json, results.md, curves.png, bars.png")
        return 0

    return run_main(body, backend_from_flags=True)


if __name__ == "__main__":
    sys.exit(main())
