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


def table(metrics: dict) -> str:
    def cell(x):
        if not isinstance(x, dict):
            return "-"
        if x.get("refused"):
            return x["reason"]
        if x.get("n") == 0:
            return "no verdicts"  # e.g. commitment from a judge without line-to-line verdicts: unknown, not 0
        return f"{x['mean']:.3f} [{x['lo']:.3f}, {x['hi']:.3f}]"

    from ppg.metrics import METRICS, metric_entry

    cols = [name for name, spec in METRICS.items() if spec.column]  # the metric table's order
    head = "| policy | " + " | ".join(cols) + " |"
    rows = [f"| {name} | " + " | ".join(cell(metric_entry(m, c)) for c in cols) + " |" for name, m in metrics.items()]
    return "\n".join([head, "|" + "---|" * (len(cols) + 1)] + rows) + "\n"


def versus_base(primary: str, metrics: dict, base: dict | None, cfg) -> tuple[str, dict[str, float | None]]:
    """Each policy's improvement over the untrained base on the primary metric, paired over the
    same personas with the gate's statistics (ppg.gate.paired_difference, cfg: the registry
    section), as markdown, and each policy's interval lower bound (None: no bound); those above 0
    clear the base. A run where none does says so in words first: its table shows no effect of
    training."""
    from ppg.gate import describe, paired_difference
    from ppg.metrics import metric, metric_spec

    if base is None or metric(base, primary) is None:
        return f"No measurement of the untrained base on `{primary}`: no control to compare with.\n", {}
    if metric_spec(primary).offline_stat is not None:
        return (f"`{primary}` is an offline metric, which compares a policy with the base by construction: "
                f"no paired difference against the base.\n"), {}
    rows, bounds = [], {}
    for pol, m in metrics.items():
        d = paired_difference(primary, m, base, None, None, cfg)
        bounds[pol] = d["lo"]
        rows.append(f"| {pol} | {describe(primary, d, cfg)} |")
    cleared = [pol for pol, lo in bounds.items() if lo is not None and lo > 0]
    words = (f"No policy's interval against the untrained base clears 0 on `{primary}`: on this evidence, "
             f"training changed nothing measurable." if not cleared else
             f"Better than the untrained base on `{primary}` (interval above 0): {', '.join(cleared)}.")
    head = f"{words}\n\n| policy | against the untrained base (paired) |\n|---|---|\n"
    return head + "\n".join(rows) + "\n", bounds


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
