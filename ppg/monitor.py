"""`ppg monitor`: the deployed champion's logged dialogues, judged and scored, and the drift rule
that sends them back as training data.

Each check reads what the logs gained since the last one (ppg.served_logs: record by record, a
record it cannot use skipped and counted by reason, nothing read twice); every dialogue names the
model that produced it in `meta.model_version` ("NAME/VERSION", e.g. "ppg-therapy/3": a served
model does not reload when the alias moves, so the champion of the moment is not evidence). A
version the registry does not have is not scored (it would get a baseline of its own): its
dialogues are counted under `unregistered`. The logs are redacted and judged like the judge stage
(same judge, same cache), and each version gets the per-dialogue mean of `monitor.metric` with a
95% interval, and the drift curve. Its baseline is the first batch of the same version scored by
the SAME judge with at least `monitor.min_turns` turns. The rule fires on an interval bound, not a
point estimate (retraining on noise is what the gate forbids too): the upper bound is below
`monitor.min_consistency`, or below the baseline mean by more than `monitor.max_drop`. When it
fires, the judged logs are written into the folder data.source reads (they become training data)
and the caller retrains. Only hashes, baselines and the last `monitor.keep_batches` judged
batches are kept.
"""

import json
import time
from pathlib import Path

from ppg.data.schema import write_dialogues
from ppg.io import atomic_open, content_hash
from ppg.served_logs import head_hash, read_logs
from ppg.train.checkpoint import fingerprint


def source_folder_reads(source: str, folder: Path) -> bool:
    """Does data.source (FORMAT:PATH,...) read the canonical JSONL files written into folder?"""
    from ppg.data.importers import parse_source

    fmt, paths = parse_source(source)
    return fmt == "jsonl" and any(Path(x).resolve() == folder.resolve() for x in paths)


def progress_of(state: dict, fmt: str) -> dict:
    """Where each log file was read up to. A state of the older layout ({path: content hash} of
    whole files read) counts a file whose content is unchanged as read to its end."""
    if "read" in state:
        return state["read"]
    out = {}
    for f, h in state.get("seen", {}).items():
        if Path(f).is_file() and content_hash(Path(f)) == h:
            size = Path(f).stat().st_size
            out[f] = {"hash": h} if fmt != "jsonl" else {"offset": size, "head": head_hash(Path(f), size)}
    return out


def by_version(dialogues) -> dict:
    """{"NAME/VERSION": dialogues} (ppg.served_logs keeps only dialogues that name one)."""
    out: dict[str, list] = {}
    for d in dialogues:
        out.setdefault(d.meta["model_version"], []).append(d)
    return out


def registered(c, version: str) -> bool:
    """Whether the registry has this NAME/VERSION."""
    from mlflow.exceptions import MlflowException

    name, _, number = version.rpartition("/")
    try:
        c.get_model_version(name, number)
        return True
    except MlflowException:
        return False


def whole_conversations(dialogues) -> list:
    """A served chat model logs every request with its conversation so far (ppg/chat_model.py),
    so a conversation of n replies arrives as n records, each a prefix of the next. A record whose
    lines begin another record of the same model version and meta.conversation is dropped: every
    turn is judged and counted once. Records without meta.conversation are kept as they are."""
    groups: dict = {}
    for d in dialogues:
        groups.setdefault((d.meta.get("model_version"), d.meta.get("conversation")), []).append(d)
    keep = []
    for (_, conv), ds in groups.items():
        if conv is None:
            keep += ds
            continue
        texts = [[(x.speaker, x.text) for x in d.lines] for d in ds]
        keep += [d for i, d in enumerate(ds)
                 if not any(len(o) > len(texts[i]) and o[:len(texts[i])] == texts[i] for o in texts)]
    order = {id(d): i for i, d in enumerate(dialogues)}
    return sorted(keep, key=lambda d: order[id(d)])


def score(dialogues, metric: str) -> dict:
    """The per-dialogue mean of the metric (verdict_rates) with its interval, turns, drift."""
    from ppg.evaluate.online import online_metrics

    m = online_metrics(dialogues)
    turns = sum(len(d.turns(s)) for d in dialogues for s in d.evaluated_speakers)
    return {**{k: v for k, v in m[metric].items() if k != "per_unit"}, "turns": turns, "drift": m["drift"]}


def decide(s: dict, baseline: dict | None, cfg) -> tuple[bool | None, str]:
    """(fires, why): None when there are too few turns to decide."""
    if s["turns"] < cfg.min_turns or s["n"] < 2:
        return None, f"{s['turns']} judged turns in {s['n']} dialogues: too few to decide (monitor.min_turns)"
    if s["hi"] < cfg.min_consistency:
        return True, (f"{cfg.metric} {s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]: its upper bound is below "
                      f"monitor.min_consistency = {cfg.min_consistency}")
    if baseline is not None and baseline["mean"] - s["hi"] > cfg.max_drop:
        return True, (f"{cfg.metric} {s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]: its upper bound is more than "
                      f"monitor.max_drop = {cfg.max_drop} below the baseline {baseline['mean']:.3f}")
    return False, f"{cfg.metric} {s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]: within bounds"


def check(p, logs: Path) -> dict:
    """One monitoring check of the logs folder (params p); returns the report, also written to
    <monitor.state>/last.json and logged to MLflow as one run per model version."""
    from ppg import tracking
    from ppg.judges.kinds import build_judge
    from ppg.judges.stage import redact

    cfg, t0 = p.monitor, time.time()
    state_dir = Path(cfg.state)
    state_path = state_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"read": {}, "baselines": {}, "checks": 0}
    incoming = Path(cfg.incoming)
    if not source_folder_reads(p.data.source, incoming):
        raise ValueError(f"monitor.incoming: data.source {p.data.source!r} does not read {incoming}, so drifted "
                         f"logs put there would never become training data (use jsonl:{incoming})")
    known = progress_of(state, cfg.format)
    dialogues, progress, read = read_logs(logs, cfg.format, known)
    report = {"logs": str(logs), "files": sorted(progress), "versions": {}, "fired": False, **read,
              "unregistered": {}}
    if dialogues:
        c = tracking.client(p.mlflow)
        groups = {}
        for version, ds in by_version(whole_conversations(dialogues)).items():
            if registered(c, version):
                groups[version] = ds
            else:  # scoring it would start a baseline for a model nobody registered
                report["unregistered"][version] = len(ds)
        judge = build_judge(p.judge)
        ident = judge.identity()
        key_judge = fingerprint(ident)  # a baseline belongs to the judge that scored it
        judged_all = []
        for version, ds in sorted(groups.items()):
            judged = judge.judge(redact(ds, p.judge.redact)[0])
            judged_all += judged
            s = score(judged, cfg.metric)
            bkey = f"{version}|{key_judge}"
            baseline = state["baselines"].get(bkey)
            fires, why = decide(s, baseline, cfg)
            if baseline is None and fires is not None:
                state["baselines"][bkey] = {k: s[k] for k in ("mean", "lo", "hi", "n", "turns")}
            report["versions"][version] = {"score": s, "baseline": baseline, "fires": fires, "why": why}
            report["fired"] |= bool(fires)
            name, _, number = version.rpartition("/")
            run = tracking.open_run(c, p.mlflow, name=f"monitor-{name}-v{number}",
                                    tags={"ppg.stage": "monitor", "ppg.model": name, "ppg.version": number,
                                          "ppg.monitor": why[:5000], "ppg.judge": key_judge})
            tracking.log_metrics(c, run, {f"monitor.{cfg.metric}": s["mean"], f"monitor.{cfg.metric}.lo": s["lo"],
                                          f"monitor.{cfg.metric}.hi": s["hi"], "monitor.turns": s["turns"],
                                          "monitor.fired": float(bool(fires))}, state["checks"])
            c.set_terminated(run, "FINISHED")
        batch = state_dir / "batches" / f"{state['checks']:06d}.jsonl"
        write_dialogues(batch, judged_all)
        if report["fired"]:
            target = incoming / f"monitor-{state['checks']:06d}.jsonl"
            write_dialogues(target, judged_all)
            report["incoming"] = str(target)
        old = sorted((state_dir / "batches").glob("*.jsonl"))[:-cfg.keep_batches or None]
        for f in old:  # retention: the newest keep_batches judged batches stay
            f.unlink()
    state["read"] = {**known, **progress}  # only now: the batch is judged
    state.pop("seen", None)
    state["checks"] += 1
    report["seconds"] = time.time() - t0
    with atomic_open(state_path) as f:
        json.dump(state, f, indent=1)
    with atomic_open(state_dir / "last.json") as f:
        json.dump(report, f, indent=1, default=str)
    return report

