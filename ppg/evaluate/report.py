"""What an evaluation shows: the metrics table, the drift plot, and the metrics in MLflow."""

from ppg import tracking

BASE = "base"  # eval.out/base: the untrained model's evaluation (no policy id is spelled so)


def plot_drift(metrics: dict, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    of = set()
    for label, m in metrics.items():
        drift = m.get("online", {}).get("drift", [])
        if drift:
            of.add(m["online"].get("drift_of", "consistency"))
            t = [x["turn"] for x in drift]
            ax.plot(t, [x["mean"] for x in drift], marker="o", label=label)
            ax.fill_between(t, [x["lo"] for x in drift], [x["hi"] for x in drift], alpha=0.2)
    what = "Consistency" if of <= {"consistency"} else "Prompt-to-line consistency" if of == {"persona"} else \
        "Consistency (prompt-to-line where no line-to-line verdict)"
    ax.set(xlabel="turn of the persona speaker", ylabel="consistent turns (share)", ylim=(0, 1.02),
           title=f"{what} by turn (95% Wilson intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_policies(rows: dict, names: list[str], path) -> None:
    """One panel per metric: each policy's (and control's) mean with its 95% interval, in the
    order of rows (label -> metrics.json); a metric a row lacks is left out of its panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ppg.metrics import HIGHER, direction, metric_entry

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 0.45 * len(rows) + 1.4), squeeze=False)
    labels = list(rows)
    for ax, name in zip(axes[0], names):
        for y, label in enumerate(labels):
            x = metric_entry(rows[label], name)
            if isinstance(x, dict) and x.get("n") and None not in (x.get("mean"), x.get("lo"), x.get("hi")):
                # a percentile bootstrap's interval (offline AUC) need not hold its point estimate
                err = [[max(0.0, x["mean"] - x["lo"])], [max(0.0, x["hi"] - x["mean"])]]
                ax.errorbar(x["mean"], y, xerr=err, fmt="o", capsize=3, color="grey" if "control" in label else "C0")
        ax.set(yticks=range(len(labels)), yticklabels=labels if ax is axes[0][0] else [],
               ylim=(len(labels) - 0.5, -0.5),
               xlabel=f"{name} ({'higher' if direction(name) == HIGHER else 'lower'} is better)")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Validation split: mean and 95% interval", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cell(x) -> str:
    """A metrics.json entry as a table cell: mean [lo, hi], the reason it was refused, or that it
    had no verdicts."""
    if not isinstance(x, dict):
        return "-"
    if x.get("refused"):
        return x["reason"]
    if x.get("n") == 0:
        return "no verdicts"  # e.g. commitment from a judge without line-to-line verdicts: unknown, not 0
    return f"{x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]"


def table(metrics: dict) -> str:
    from ppg.metrics import METRICS, metric_entry

    cols = [name for name, spec in METRICS.items() if spec.column]  # the metric table's order
    head = "| policy | " + " | ".join(cols) + " |"
    rows = [f"| {name} | " + " | ".join(cell(metric_entry(m, c)) for c in cols) + " |" for name, m in metrics.items()]
    return "\n".join([head, "|" + "---|" * (len(cols) + 1)] + rows) + "\n"


CONTROLS = {BASE: ("the untrained base", "training changed nothing measurable"),
            "bc": ("bc, the reward-free control", "the rewards added nothing measurable over plain fine-tuning "
                                                  "on the same turns")}
"""The controls every policy is compared with: their names in the table's words, and what a run
in which no policy clears one shows."""


def versus_controls(primary: str, metrics: dict, controls: dict, cfg) -> tuple[str, str, dict]:
    """Each policy's improvement over each control (CONTROLS; controls: name -> its metrics, None
    when not measured) on the primary metric, paired over the same personas with the gate's
    statistics (ppg.gate.paired_difference; cfg: the registry section). Returns (the words, one
    line per control: which policies clear it, or that none does; the table of differences;
    control -> policy -> difference)."""
    from ppg.gate import describe, paired_difference
    from ppg.metrics import metric, metric_spec

    if metric_spec(primary).offline_stat is not None:
        return (f"`{primary}` is an offline metric, which compares a policy with the base by construction: "
                f"no paired difference against the controls.\n"), "", {}
    words, diffs = [], {}
    for ctl, m in controls.items():
        name, nothing = CONTROLS[ctl]
        if m is None or metric(m, primary) is None:
            words.append(f"No measurement of {name} on `{primary}`: no comparison with it.")
            continue
        diffs[ctl] = {pol: paired_difference(primary, x, m, None, None, cfg) for pol, x in metrics.items()}
        cleared = [pol for pol, d in diffs[ctl].items() if d["lo"] is not None and d["lo"] > 0]
        words.append(f"Better than {name} on `{primary}` (interval above 0): {', '.join(cleared)}." if cleared else
                     f"No policy's interval against {name} clears 0 on `{primary}`: on this evidence, {nothing}.")
    if not diffs:
        return "\n".join(words) + "\n", "", {}
    head = "| policy | " + " | ".join(f"against {CONTROLS[ctl][0]} (paired)" for ctl in diffs) + " |"
    rows = [f"| {pol} | " + " | ".join(describe(primary, diffs[ctl][pol], cfg) for ctl in diffs) + " |"
            for pol in metrics]
    return "\n".join(words) + "\n", "\n".join([head, "|---|" + "---|" * len(diffs), *rows]) + "\n", diffs


def flat_metrics(metrics: dict, prefix: str = "") -> dict:
    """Scalar metrics for MLflow: every {mean, lo, hi} as name, name.lo, name.hi."""
    out = {}
    for key, v in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict) and "mean" in v:
            out.update({name: v["mean"], f"{name}.lo": v.get("lo"), f"{name}.hi": v.get("hi")})
        elif isinstance(v, dict):
            out.update(flat_metrics(v, f"{name}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = v
    return out


def log_evaluation(p, run_id: str, metrics: dict, folder) -> None:
    """Evaluation metrics (prefixed by split), the drift curve by turn and the files of folder
    into the training run (the policy's child run)."""
    c = tracking.client(p.mlflow)
    split = metrics.get("split", "validation")
    scalars = flat_metrics({k: v for k, v in metrics.items() if k in ("online", "offline")}, f"{split}.")
    tracking.log_metrics(c, run_id, {k: v for k, v in scalars.items() if ".drift." not in k}, 0)
    for x in metrics.get("online", {}).get("drift", []):
        tracking.log_metrics(c, run_id, {f"{split}.drift": x["mean"]}, x["turn"])
    c.log_artifacts(run_id, str(folder), f"eval-{split}")
