"""Turns evaluation metrics into the report every method prints and writes.

Rows: each sub-network, their mean ("S-avg"), the mean-logit ensemble, and the method's
own teachers (e.g. FFL's fused classifier).  Accuracies are percentages.
"""

import json

from keras_ffl.files import atomic_write_text


def summarize(metrics, part_names):
    """``metrics``: a dict from ``model.evaluate(return_dict=True)`` (``acc_net0``, ``top5_fused``...)."""
    parts = {}
    for part in part_names:
        row = {"top1": 100.0 * float(metrics[f"acc_{part}"])}
        if f"top5_{part}" in metrics:
            row["top5"] = 100.0 * float(metrics[f"top5_{part}"])
        parts[part] = row
    nets = [p for p in part_names if p.startswith("net")]
    s_avg = {key: sum(parts[p][key] for p in nets) / len(nets) for key in parts[nets[0]]}
    ordered = {p: parts[p] for p in nets}
    ordered["S-avg"] = s_avg
    ordered.update({p: parts[p] for p in part_names if not p.startswith("net")})
    return ordered


def format_table(rows, title=None):
    """A Markdown table of top-1 (and top-5) accuracy and top-1 error per row."""
    has_top5 = any("top5" in r for r in rows.values())
    header = "| model | top-1 acc (%) | top-1 err (%) |" + (" top-5 acc (%) |" if has_top5 else "")
    rule = "|---|---:|---:|" + ("---:|" if has_top5 else "")
    lines = ([f"{title}", ""] if title else []) + [header, rule]
    for name, r in rows.items():
        line = f"| {name} | {r['top1']:.2f} | {100 - r['top1']:.2f} |"
        if has_top5:
            line += f" {r.get('top5', float('nan')):.2f} |"
        lines.append(line)
    return "\n".join(lines)


def write_report(path, report):
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=True) + "\n")
