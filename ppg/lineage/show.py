"""`ppg show NAME[@ALIAS|/VERSION]`: a registered version's provenance in one screen, read from
its tags and the record of the pipeline run that made it (ppg.lineage.record)."""

import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import yaml

from ppg.lineage.record import FOLDER, lock_outs, read_record


def resolve(c, ref: str) -> tuple[str, str]:
    """NAME@ALIAS, NAME/VERSION or NAME (its champion) -> (name, version)."""
    if "@" in ref:
        name, alias = ref.split("@", 1)
        return name, str(c.get_model_version_by_alias(name, alias).version)
    if "/" in ref:
        name, version = ref.rsplit("/", 1)
        return name, version
    return ref, str(c.get_model_version_by_alias(ref, "champion").version)


def flat(d, prefix="") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_params(recorded: dict, commit: str | None) -> tuple[dict, str]:
    """The recorded params that differ from the workspace's params.yaml at the recorded commit
    (what an overlay or a hand edit changed for this run), or from ppg/config.py's defaults when
    this repository does not hold that commit. Returns (changes, what they are relative to)."""
    from ppg.config import Params
    from ppg.lineage.record import git

    committed = git("show", f"{commit}:params.yaml") if commit else None
    if committed is not None and committed.returncode == 0:
        base, against = yaml.safe_load(committed.stdout) or {}, f"params.yaml at {commit[:12]}"
    else:
        base, against = asdict(Params()), "the defaults of ppg/config.py"
    defaults, ran = flat(base), flat(recorded)
    return {k: v for k, v in ran.items() if defaults.get(k, object()) != v}, against


def provenance(c, ref: str) -> dict:
    name, version = resolve(c, ref)
    v = c.get_model_version(name, version)
    tags, parent = v.tags, v.tags.get("ppg.parent_run_id")
    out = {"model": name, "version": version, "aliases": list(v.aliases), "policy": tags.get("ppg.policy"),
           "training_run": tags.get("ppg.run_id"), "parent_run": parent, "commit": tags.get("ppg.git_commit"),
           "workspace_commit": tags.get("ppg.workspace_commit"), "code_hash": tags.get("ppg.code_hash"),
           "gate": tags.get("ppg.gate"), "validation": {k.removeprefix("ppg.validation."): x for k, x in tags.items()
                                                        if k.startswith("ppg.validation.")}}
    if not parent:
        return {**out, "record": None}
    files = read_record(c, parent)
    gate = {}
    if any(a.path == "gate.json" for a in c.list_artifacts(parent)):  # the gate's verdict, beside the record
        with tempfile.TemporaryDirectory() as tmp:
            gate = json.loads(Path(c.download_artifacts(parent, "gate.json", tmp)).read_text()).get("decision", {})
    code = json.loads(files.get("code.json", "{}"))
    outs = lock_outs(yaml.safe_load(files.get("dvc.lock", "")))
    params = yaml.safe_load(files.get("params.yaml", "")) or {}
    sources = json.loads(files.get("sources.json", "{}"))
    changed, against = changed_params(params, code.get("commit"))
    return {**out, "record": f"runs:/{parent}/{FOLDER}", "dirty": code.get("dirty"),
            "diff_bytes": code.get("diff_bytes"), "pushed": code.get("pushed"), "dvc_remote": code.get("dvc_remote"),
            "overlay": "overlay.yaml" in files, "changed_params": changed, "params_against": against,
            "data": {k: outs.get(k) for k in ((params.get("build") or {}).get("out", "data/built"),
                                              (params.get("judge") or {}).get("out", "data/judged"))},
            "sources": {"source": sources.get("source"), "files": len(sources.get("files", []))},
            "base_model": {"spec": (params.get("model") or {}).get("spec"),
                           "md5": outs.get((params.get("model") or {}).get("base", "models/base"))},
            "environment": json.loads(files.get("environment.json", "{}")),
            "decision": {k: gate.get(k) for k in ("promoted", "reason", "primary", "difference", "champion_before")}}


def render(d: dict) -> str:
    """The provenance as a few lines of text."""
    lines = [f"{d['model']} v{d['version']} ({d['policy']}){' @' + ', @'.join(d['aliases']) if d['aliases'] else ''}"]
    if d.get("record") is None:
        return "\n".join(lines + ["  no record: registered before runs were recorded, or by hand"])
    env = d["environment"]
    diff = (d["decision"] or {}).get("difference") or {}
    lines += [f"  code       {d['commit'] or '(no commit)'}"
              + (f" + uncommitted diff of {d['diff_bytes']} bytes" if d["dirty"] else "")
              + ("" if d["pushed"] else " (on no remote branch)") + f", package hash {d['code_hash']}",
              f"  lock       committed as {d['workspace_commit'] or '(not committed)'}; DVC remote "
              f"{(d['dvc_remote'] or {}).get('url')}",
              f"  data       {d['sources']['source']} ({d['sources']['files']} file(s)); "
              + ", ".join(f"{k} {v}" for k, v in d["data"].items()),
              f"  base model {d['base_model']['spec']} ({d['base_model']['md5']})",
              f"  params     vs {d['params_against']}: "
              + (", ".join(f"{k}={v}" for k, v in sorted(d["changed_params"].items())) or "no change")
              + ("  [an overlay was merged]" if d["overlay"] else ""),
              f"  env        torch {env.get('versions', {}).get('torch')}, {env.get('torch_threads')} threads, "
              f"{env.get('cpu_capability')}, Python {env.get('python')}, "
              f"packages {str(env.get('packages_sha256'))[:12]}",
              f"  runs       pipeline {d['parent_run']}, training {d['training_run']}",
              "  validation " + ", ".join(f"{k} = {v}" for k, v in d["validation"].items()),
              f"  gate       {d['gate']}"]
    if diff:
        lines.append(f"             {d['decision'].get('primary')} difference {diff.get('mean')} "
                     f"[{diff.get('lo')}, {diff.get('hi')}] against the champion "
                     f"v{d['decision'].get('champion_before')}")
    elif d["decision"].get("champion_before") is None:
        lines.append("             no champion before it")
    return "\n".join(lines)
