"""Tables and plots of the K study from its summaries (study/summary.json, study-real/summary.json):
`ppg study-report --out docs/results`. Everything here reads numbers; nothing is typed in by hand."""

import json
from pathlib import Path

from ppg.study.settle import horizon, plot_reward_vs_k, settle_markdown


def _pm(x, digits=3) -> str:
    if not x or x.get("mean") != x.get("mean"):
        return "-"
    if x.get("lo") != x.get("lo"):
        return f"{x['mean']:.{digits}f}"
    return f"{x['mean']:.{digits}f} ± {(x['hi'] - x['lo']) / 2:.{digits}f}"


def _split(key: str):
    d, n, policy, w = key.split("|")
    return d, int(n), policy, w


def _offline(s: dict) -> dict:
    """(d, n, policy, weights) -> row, without the online cells (they have no data size)."""
    return {_split(k): v for k, v in s["cells"].items() if not k.endswith("|online")}


def _order(policies):
    """base, greedy, k2, k3, ... by K, full, then the rest (segment, bc)."""
    def rank(q):
        if q == "base":
            return (0, 0)
        h = horizon(q, 10**6)
        return (1, h) if h is not None else (2, 0)
    return sorted(policies, key=rank)


def sim_tables(s: dict, metric: str = "reward") -> str:
    """Per d: rows policy x weighting, columns data sizes; mean ± t-interval half-width over seeds."""
    cells = _offline(s)
    ds = sorted({k[0] for k in cells}, key=lambda d: (d == "end", d))
    ns = sorted({k[1] for k in cells if k[2] != "base"})
    out = []
    for d in ds:
        best = {n: {w: s["best"].get(f"{d}|{n}|{w}") for w in {k[3] for k in cells}} for n in ns}
        out += [f"**d = {d}** ({metric}; base model: {_pm(cells.get((d, 0, 'base', '-'), {}).get(metric))})", "",
                "| policy | weights | " + " | ".join(f"n = {n}" for n in ns) + " |", "|---|---|" + "---|" * len(ns)]
        for w in sorted({k[3] for k in cells if k[2] != "base"}):
            for policy in _order({k[2] for k in cells if k[2] != "base"}):
                row = [_pm(cells.get((d, n, policy, w), {}).get(metric)) for n in ns]
                row = [f"**{x}**" if best[n].get(w) == policy and metric == "reward" else x for n, x in zip(ns, row)]
                out.append(f"| {policy} | {w} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def best_table(s: dict) -> str:
    cells = _offline(s)
    ds = sorted({k[0] for k in cells}, key=lambda d: (d == "end", d))
    ns = sorted({k[1] for k in cells if k[2] != "base"})
    ws = sorted({k[3] for k in cells if k[2] != "base"})
    out = ["| d | weights | " + " | ".join(f"n = {n}" for n in ns) + " |", "|---|---|" + "---|" * len(ns)]
    for d in ds:
        for w in ws:
            out.append(f"| {d} | {w} | " + " | ".join(s["best"].get(f"{d}|{n}|{w}", "-") for n in ns) + " |")
    return "\n".join(out) + "\n"


def mechanism_table(s: dict, metric: str = "invented") -> str:
    """The metric per d (rows) and policy (columns) at the largest data size, per weighting."""
    cells = _offline(s)
    ds = sorted({k[0] for k in cells}, key=lambda d: (d == "end", d))
    n = max(k[1] for k in cells if k[2] != "base")
    policies = _order({k[2] for k in cells if k[2] != "base"})
    out = ["| d | weights | base | " + " | ".join(policies) + " |", "|---|---|---|" + "---|" * len(policies)]
    for w in sorted({k[3] for k in cells if k[2] != "base"}):
        for d in ds:
            base = _pm(cells.get((d, 0, "base", "-"), {}).get(metric), 2)
            out.append(f"| {d} | {w} | {base} | " + " | ".join(_pm(cells.get((d, n, q, w), {}).get(metric), 2)
                                                             for q in policies) + " |")
    return f"n = {n}\n\n" + "\n".join(out) + "\n"


def online_table(s: dict) -> str:
    """Online PPG cells from the study base next to the base itself, per d."""
    rows = {_split(k): v for k, v in s["cells"].items() if k.endswith("|online")}
    if not rows:
        return ""
    cols = ("reward", "consistency", "coverage", "invented", "exposed")
    out = ["| d | policy | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for d in sorted({k[0] for k in rows}, key=lambda d: (d == "end", d)):
        base = s["cells"].get(f"{d}|0|base|-")
        if base:
            out.append(f"| {d} | base | " + " | ".join(_pm(base.get(m)) for m in cols) + " |")
        for policy in _order({k[2] for k in rows if k[0] == d}):
            row = rows[(d, 0, policy, "online")]
            out.append(f"| {d} | {policy} online | " + " | ".join(_pm(row.get(m)) for m in cols) + " |")
    return "\n".join(out) + "\n"


def plot_sim(s: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = _offline(s)
    ds = sorted({k[0] for k in cells}, key=lambda d: (d == "end", d))
    ns = sorted({k[1] for k in cells if k[2] != "base"})
    ws = sorted({k[3] for k in cells if k[2] != "base"})
    policies = _order({k[2] for k in cells if k[2] != "base"})
    files = []
    for metric, name in (("reward", "sim-reward-vs-n.png"), ("invented", "sim-invented-vs-n.png")):
        fig, axes = plt.subplots(len(ws), len(ds), figsize=(3.2 * len(ds), 2.8 * len(ws)), squeeze=False, sharey=True)
        for i, w in enumerate(ws):
            for j, d in enumerate(ds):
                ax = axes[i][j]
                for policy in policies:
                    xs = [(n, cells[(d, n, policy, w)][metric]) for n in ns
                          if cells.get((d, n, policy, w), {}).get(metric)]
                    if xs:
                        ax.errorbar([n for n, _ in xs], [x["mean"] for _, x in xs], fmt="o-", ms=3, capsize=2,
                                    yerr=[[max(x["mean"] - x["lo"], 0) if x["lo"] == x["lo"] else 0 for _, x in xs],
                                          [max(x["hi"] - x["mean"], 0) if x["hi"] == x["hi"] else 0 for _, x in xs]],
                                    label=policy)
                base = cells.get((d, 0, "base", "-"), {}).get(metric)
                if base:
                    ax.axhline(base["mean"], color="grey", ls="--", lw=1, label="base")
                ax.set_xscale("log")
                ax.set_xticks(ns, [str(n) for n in ns])
                ax.set_title(f"d = {d}, {w}", fontsize=9)
                if j == 0:
                    ax.set_ylabel({"reward": "held-out reward", "invented": "open asks answered (invented)"}[metric],
                                  fontsize=8)
                if i == len(ws) - 1:
                    ax.set_xlabel("logged dialogues n", fontsize=8)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    # best horizon vs d: the horizon of the winning policy per (d, n), full = T, segment marked apart
    fig, axes = plt.subplots(1, len(ws), figsize=(4.2 * len(ws), 3.2), squeeze=False)
    turns = len(next(iter(s["cells"].values()))["drift"])
    for i, w in enumerate(ws):
        ax = axes[0][i]
        for n, marker in zip(ns, "osD^v"):
            ys = [s["best"].get(f"{d}|{n}|{w}") for d in ds]
            ax.plot(range(len(ds)), [horizon(y, turns) or 0 if y else 0 for y in ys], marker=marker,
                    ls=":", label=f"n = {n}")
        ax.set_xticks(range(len(ds)), [f"d={d}" for d in ds])
        ks = [q for q in policies if horizon(q, turns)]
        ax.set_yticks([0, *[horizon(q, turns) for q in ks]], ["segment", *ks])
        ax.set_title(f"best policy by held-out reward ({w})", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sim-best-policy.png", dpi=110)
    plt.close(fig)
    files.append("sim-best-policy.png")
    # the mechanism: invented rate against the horizon K (full = T), one line per d, largest n
    fig, axes = plt.subplots(1, len(ws), figsize=(4.2 * len(ws), 3.2), squeeze=False, sharey=True)
    for i, w in enumerate(ws):
        ax = axes[0][i]
        for d in ds:
            ks = [(horizon(q, turns), cells[(d, ns[-1], q, w)]["invented"]) for q in policies
                  if horizon(q, turns) and cells.get((d, ns[-1], q, w), {}).get("invented")]
            ks.sort(key=lambda kx: kx[0])
            ax.errorbar([k for k, _ in ks], [x["mean"] for _, x in ks], fmt="o-", ms=3, capsize=2, label=f"d = {d}",
                        yerr=[[max(x["mean"] - x["lo"], 0) if x["lo"] == x["lo"] else 0 for _, x in ks],
                              [max(x["hi"] - x["mean"], 0) if x["hi"] == x["hi"] else 0 for _, x in ks]])
        hs = sorted({horizon(q, turns) for q in policies if horizon(q, turns)})
        ax.set_xticks(hs, [f"{h}\ngreedy" if h == 1 else f"{h}\nfull" if h == turns else str(h) for h in hs])
        ax.set_xlabel("credit horizon K", fontsize=8)
        ax.set_title(f"invented at open asks, n = {ns[-1]}, {w}", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("open asks answered (invented)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sim-invented-vs-k.png", dpi=110)
    plt.close(fig)
    files.append("sim-invented-vs-k.png")
    # drift: consistency per turn at the largest n, per policy, one panel per d
    fig, axes = plt.subplots(1, len(ds), figsize=(3.2 * len(ds), 2.8), squeeze=False, sharey=True)
    w = "shaped" if "shaped" in ws else ws[0]
    for j, d in enumerate(ds):
        ax = axes[0][j]
        for policy in ["base", *policies]:
            row = cells.get((d, 0, "base", "-") if policy == "base" else (d, ns[-1], policy, w))
            if row:
                ax.plot(range(1, len(row["drift"]) + 1), row["drift"], marker=".", label=policy,
                        **({"color": "grey", "ls": "--"} if policy == "base" else {}))
        ax.set_title(f"d = {d}, n = {ns[-1]}, {w}", fontsize=9)
        ax.set_xlabel("persona turn", fontsize=8)
    axes[0][0].set_ylabel("consistent turns (share)", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "sim-drift.png", dpi=110)
    plt.close(fig)
    files.append("sim-drift.png")
    return files


def real_table(s: dict) -> str:
    out = ["| domain | policy | weights | AUC [95% bootstrap] | contradicting / judged turns | weighted NLL | "
           "change from base | folds | seconds |", "|---|---|---|---|---|---|---|---|---|"]
    for key, m in s["cells"].items():
        domain, policy, w = key.split("|")
        a = m["auc"]
        auc = a["reason"] if a.get("refused") else f"{a['mean']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}]"
        out.append(f"| {domain} | {policy} | {w} | {auc} | {m['contradictions']} / {m['turns']} | "
                   f"{_pm(m['weighted_nll'], 2)} | {_pm(m['weighted_nll_change'], 4)} | {len(m['folds'])} | "
                   f"{m['seconds']:.0f} |")
    return "\n".join(out) + "\n"


def _real_config(r: dict) -> list[str]:
    c = r.get("config")
    if not c:
        return []
    return [f"study.real: {c['max_dialogues'] or 'all'} dialogues per domain, {c['folds']} persona-grouped folds, "
            f"{c['max_length']}-token windows, {c['steps']} steps x {c['batch_size']} windows at lr {c['lr']:g} "
            f"({'LoRA' if c['lora'] else 'full fine-tune'}), {c['max_turns'] or 'every'} scored turns per fold.", ""]


def plot_real(s: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(k.split("|"), m["auc"]) for k, m in s["cells"].items() if not m["auc"].get("refused")]
    if not rows:
        return []
    domains = sorted({d for (d, _, _), _ in rows})  # one panel per domain: its labels stay readable
    fig, axes = plt.subplots(1, len(domains), figsize=(2.6 * len(domains) + 0.8, 3.2), sharey=True, squeeze=False)
    for ax, dom in zip(axes[0], domains):
        part = [(f"{p}\n{w}", a) for (d, p, w), a in rows if d == dom]
        ax.errorbar(range(len(part)), [a["mean"] for _, a in part], fmt="o", capsize=3,
                    yerr=[[a["mean"] - a["lo"] for _, a in part], [a["hi"] - a["mean"] for _, a in part]])
        ax.axhline(0.5, color="grey", ls="--", lw=1)
        ax.set_xticks(range(len(part)), [lab for lab, _ in part], fontsize=6)
        ax.set_title(dom, fontsize=9)
    axes[0][0].set_ylabel("likelihood-ratio AUC")
    fig.tight_layout()
    fig.savefig(out / "real-auc.png", dpi=110)
    plt.close(fig)
    return ["real-auc.png"]


def report(sim: Path | None, real: Path | None, out: Path) -> Path:
    """Write OUT/study-tables.md (+ PNGs) from the summaries that exist."""
    from ppg.io import atomic_open

    if not any(x and Path(x).exists() for x in (sim, real)):
        raise FileNotFoundError(f"no study summary at {sim} or {real}: run `ppg study` / `ppg study-real` first")
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# K study: generated tables", "",
             "Written by `ppg study-report`; every number comes from the study summaries.", ""]
    if sim and Path(sim).exists():
        s = json.loads(Path(sim).read_text())
        figs = plot_sim(s, out)
        settling = []
        if s.get("world", {}).get("predicted_k"):  # summaries written before the world was recorded have none
            ws = sorted({k.split("|")[3] for k in s["cells"]} - {"-", "online"})
            for w in ws:
                plot_reward_vs_k(s, w, out / f"sim-reward-vs-k-{w}.png")
                settling += [settle_markdown(s, w), f"![reward vs K, {w}](sim-reward-vs-k-{w}.png)", ""]
        parts += ["## Simulator", "", f"{len(s['cells'])} (d, n, policy, weighting) groups. The `ppg study` run that "
                  f"wrote this summary trained {s.get('cells_run')} cells ({s.get('seconds', 0):.0f} s in cells, "
                  f"{s.get('wall_seconds', 0):.0f} s wall); cells finished by earlier runs were read back.", "",
                  *(["### The settling test (docs/results.md states it)", "", *settling] if settling else []),
                  "### Best policy (highest mean held-out reward over seeds)", "", best_table(s),
                  "### Held-out reward (mean ± 95% t half-width over seeds; bold = best)", "", sim_tables(s),
                  "### Open asks answered with an invented value, by d and policy", "", mechanism_table(s),
                  "### Open asks answered with an invented value", "", sim_tables(s, "invented"),
                  "### Consistency (turns whose persona and commitment verdicts hold)", "",
                  sim_tables(s, "consistency"), "### Coverage (asked turns answered)", "",
                  sim_tables(s, "coverage"), "### Online PPG from the study base (mean ± 95% t half-width over seeds)",
                  "", online_table(s) or "(no online cells)\n", *[f"![{f}]({f})" for f in figs], ""]
    if real and Path(real).exists():
        r = json.loads(Path(real).read_text())
        figs = plot_real(r, out)
        parts += ["## Consistent-LLMs (real logged dialogues)", "",
                  f"Model {r['model']}, {r['steps']} steps per cell, cell seconds {r['seconds']:.0f}, "
                  f"wall seconds {r.get('wall_seconds', 0):.0f}.", "", *_real_config(r), real_table(r),
                  *[f"![{f}]({f})" for f in figs], ""]
    with atomic_open(out / "study-tables.md") as f:
        f.write("\n".join(parts))
    return out / "study-tables.md"
