"""`ppg reproduce NAME VERSION`: rebuild a registered version from its record alone and compare.

The record (ppg.lineage.record, under `lineage/` of the pipeline run the version's tags name)
gives the commit and diff of the code, the merged params.yaml, dvc.lock, the DVC remote and the
environment. In an empty folder: the code at that commit (the diff applied), imported from there
(PYTHONPATH; its hash checked against the recorded one), the recorded params.yaml and dvc.lock;
only the inputs of `train@P` and `evaluate@P` pulled from the recorded remote (DVC checks their md5
against the lock); both stages run forced and without DVC's run-cache, so nothing is restored;
the output is exported as registration does and compared file by file (sha256) and tensor by
tensor with the registered artifacts, and the validation metrics with the recorded ones.

On CPU with the recorded thread count and packages, training is bit-identical; what breaks it is
reported first (environment_mismatch) so a difference can be read.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from ppg.lineage.record import environment, environment_mismatch, git, lock_outs, read_record


class ReproduceError(RuntimeError):
    pass


def _sha256(f: Path) -> str:
    with open(f, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def weight_files(folder: Path) -> dict[str, str]:
    """sha256 of every weight file of an HF folder."""
    return {f.name: _sha256(f) for f in sorted(folder.iterdir()) if f.suffix in (".safetensors", ".bin")}


def max_abs_diff(a: Path, b: Path) -> float:
    """The largest |difference| between the two folders' tensors (inf when their names differ)."""
    from safetensors.torch import load_file

    def tensors(folder):
        out = {}
        for f in sorted(folder.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    x, y = tensors(a), tensors(b)
    if set(x) != set(y) or any(x[k].shape != y[k].shape for k in x):
        return float("inf")
    return max((float((x[k].double() - y[k].double()).abs().max()) for k in x if x[k].numel()), default=0.0)


def _stage_deps(lock: dict, stage: str) -> list[str]:
    """The data deps of a stage in dvc.lock (code under ppg/ comes from git, not the remote)."""
    return [d["path"] for d in lock["stages"][stage].get("deps", []) if not d["path"].startswith("ppg/")]


def _run(cmd: list[str], cwd: Path, env: dict, what: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise ReproduceError(f"{what} failed (exit {r.returncode}): {' '.join(cmd)}\n{(r.stdout + r.stderr)[-3000:]}")
    return r.stdout


def checkout(commit: str, diff: str, into: Path, repo: Path = Path(".")) -> None:
    """The tracked files at commit, with the recorded diff applied, into an empty folder that is a
    git repository of its own (DVC needs one)."""
    if git("cat-file", "-e", f"{commit}^{{commit}}", cwd=repo).returncode:
        raise ReproduceError(f"commit {commit} is not in the git repository at {repo.resolve()}: run reproduce "
                             f"in a clone of the workspace that ran it (fetch its branches first)")
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=repo, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    git("init", "-q", cwd=into)
    if diff:
        patch = into / ".ppg-record.diff"
        patch.write_text(diff)
        r = git("apply", "--binary", str(patch.name), cwd=into)
        patch.unlink()
        if r.returncode:
            raise ReproduceError(f"the recorded diff does not apply to {commit}: {r.stderr[-1000:]}")


def reproduce(c, name: str, version: str, into: Path, start: str = "train", say=print) -> dict:
    """Rebuild version `version` of registered model `name` in the empty folder `into` (c: an
    MlflowClient on the store that holds it). start="import" reruns every stage from the data
    source instead of pulling the built data. Returns the comparison (see the module doc)."""
    v = c.get_model_version(name, version)
    tags = v.tags
    parent, policy = tags.get("ppg.parent_run_id"), tags.get("ppg.policy")
    if not parent or not policy:
        raise ReproduceError(f"{name} v{version} has no record (tags ppg.parent_run_id, ppg.policy): it was "
                             f"registered before runs were recorded, or by hand")
    from mlflow.exceptions import MlflowException

    try:
        rec = read_record(c, parent)
    except (MlflowException, OSError) as e:
        raise ReproduceError(f"cannot read the record of pipeline run {parent} ({name} v{version}): {e}") from None
    missing = [f for f in ("code.json", "environment.json", "params.yaml", "dvc.lock") if f not in rec]
    if missing:
        raise ReproduceError(f"the record of pipeline run {parent} ({name} v{version}) lacks {', '.join(missing)}: "
                             f"the run ended before its stages finished, or predates recording")
    code, env_recorded = json.loads(rec["code.json"]), json.loads(rec["environment.json"])
    lock = yaml.safe_load(rec["dvc.lock"])
    for s in (f"train@{policy}", f"evaluate@{policy}"):
        if s not in lock.get("stages", {}):
            raise ReproduceError(f"the recorded dvc.lock has no stage {s}: {name} v{version} was not trained by "
                                 f"the stages of that run")
    if start == "import" and "sources.json" not in rec:
        raise ReproduceError(f"--from import: the record of {parent} has no sources.json")
    if into.exists() and any(into.iterdir()):
        raise ReproduceError(f"--into {into}: not empty; reproduce builds in an empty folder")
    if not code.get("commit"):
        raise ReproduceError(f"the run {parent} recorded no commit (the workspace had none): its code cannot be "
                             f"checked out")
    into.mkdir(parents=True, exist_ok=True)
    checkout(code["commit"], rec.get("code.diff", ""), into)
    for f in ("params.yaml", "dvc.lock"):
        (into / f).write_text(rec[f])
    if start == "import":
        _bring_sources(json.loads(rec["sources.json"]), json.loads(rec.get("models.json", "{}")), into)

    here = environment()
    mismatch = environment_mismatch(env_recorded, here)
    for m in mismatch:
        say(f"environment differs from the record ({m}): weights may differ for that reason alone")
    # the training process's own thread count (its run's tag) decides its sums' order
    trained_with = (c.get_run(tags["ppg.run_id"]).data.tags.get("ppg.env.torch_threads")
                    if tags.get("ppg.run_id") else None)
    threads = str(trained_with or env_recorded.get("torch_threads") or os.cpu_count())
    if trained_with and str(trained_with) != str(here["torch_threads"]):
        mismatch.append(f"torch_threads of the training run: {trained_with}, set for the rebuild")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "PPG_PARENT_RUN_ID")}
    env.update(PYTHONPATH=str(into.resolve()), PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, MLFLOW_TRACKING_URI=c.tracking_uri,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    probe = _run([sys.executable, "-c", "import json, ppg, ppg.lineage.record as r; "
                                       "print(json.dumps([ppg.__file__, r.code_hash()]))"], into, env, "importing ppg")
    imported, code_now = json.loads(probe.strip().splitlines()[-1])
    if not Path(imported).resolve().is_relative_to(into.resolve()):
        raise ReproduceError(f"ppg was imported from {imported}, not from the checkout in {into}")
    if code_now != code.get("code_hash"):
        say(f"the checked-out code hashes to {code_now}, the record says {code.get('code_hash')}: the run imported "
            f"other code than its commit holds (an installed copy?)")

    dvc = [str(Path(sys.executable).parent / "dvc")]
    remote = code.get("dvc_remote", {}).get("url")
    stages = [f"train@{policy}", f"evaluate@{policy}"]
    if start == "import":
        stages = [s for s in lock.get("stages", {}) if not s.startswith(("train@", "evaluate@"))] + stages
    else:
        if not remote:
            raise ReproduceError("the record names no DVC remote to pull the training inputs from")
        _run(dvc + ["remote", "add", "--local", "-f", "-d", "recorded", remote], into, env, "dvc remote add")
        produced = set(lock_outs(lock, stages))
        need = sorted({d for s in stages for d in _stage_deps(lock, s)} - produced)
        say(f"pulling the inputs of {', '.join(stages)} from {remote}: {', '.join(need)}")
        _run(dvc + ["pull", *need], into, env, "dvc pull")
        status = json.loads(_run(dvc + ["status", "--json", *stages], into, env, "dvc status") or "{}")
        changed = {s: {path: why for x in v if isinstance(x, dict) for path, why in x.get("changed deps", {}).items()
                       if path not in produced} for s, v in status.items()}  # train@P's output is not there yet
        changed = {s: x for s, x in changed.items() if x}
        if changed:
            raise ReproduceError(f"the pulled inputs or the code do not match the recorded dvc.lock: {changed}")
    for stage in stages:
        say(f"running {stage} (forced, no run-cache)")
        _run(dvc + ["repro", "-f", "-s", "--no-run-cache", stage], into, env, f"dvc repro {stage}")
    out = _compare(c, name, version, policy, into, tags, env, mismatch, code, code_now, stages)
    if start == "import":  # the data stages' outputs against the recorded lock
        data = [s for s in stages if not s.startswith(("train@", "evaluate@"))]
        rebuilt = lock_outs(yaml.safe_load((into / "dvc.lock").read_text()), data)
        outs = {path: [md5, rebuilt.get(path)] for path, md5 in lock_outs(lock, data).items()}
        # judged and validation outputs hold wall times and GX run ids, so their md5 differs by
        # design; what training read must not
        fed = _stage_deps(lock, f"train@{policy}")
        out.update(outputs=outs, training_inputs_identical=all(outs[d][0] == outs[d][1] for d in fed if d in outs))
    return out


def _bring_sources(sources: dict, models: dict, into: Path) -> None:
    """--from import needs every input the record names, unchanged: the simulator can always be
    rerun; a logged file must still be there (a relative path: in the folder reproduce runs from,
    the workspace or a clone) with its recorded sha256, and is copied to the same place in the
    rebuild; an LLM judge's answers cannot be replayed from the record."""
    if sources.get("source") != "simulator":
        for f in sources.get("files", []):
            p = Path(f["path"])
            if not p.is_file() or _sha256(p) != f["sha256"]:
                raise ReproduceError(f"--from import: {p} (read by data.source {sources['source']!r}) is "
                                     f"{'gone' if not p.is_file() else 'changed'}; the recorded sources cannot be "
                                     f"reached: reproduce from train (the built data is in the DVC remote)")
            if not p.is_absolute():
                (into / p).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, into / p)
    for role, m in models.items():
        if m.get("kind") == "llm":
            raise ReproduceError(f"--from import: the {role} was the LLM endpoint {m.get('base_url')} "
                                 f"({m.get('model')}), whose answers the record cannot replay: reproduce from train")


def _compare(c, name, version, policy, into, tags, env, mismatch, code, code_now, stages) -> dict:
    import mlflow.artifacts

    p = yaml.safe_load((into / "params.yaml").read_text())
    train_out = Path(into) / p.get("train", {}).get("out", "models") / policy
    run = json.loads((train_out / "run.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        export = subprocess.run([sys.executable, "-c", "import sys; from ppg.models import export_merged, "
                                 "load_tokenizer; m = export_merged(sys.argv[1], sys.argv[2]); "
                                 "load_tokenizer(m).save_pretrained(str(m))", str(train_out), f"{tmp}/rebuilt"],
                                cwd=into, env=env, capture_output=True, text=True)
        if export.returncode:
            raise ReproduceError(f"export failed: {export.stderr[-2000:]}")
        reg = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                       dst_path=f"{tmp}/registered", tracking_uri=c.tracking_uri))
        mlmodel = yaml.safe_load((reg / "MLmodel").read_text())
        hf = reg / mlmodel["flavors"]["python_function"]["artifacts"]["hf"]["path"]
        recorded_files, rebuilt_files = weight_files(hf), weight_files(Path(tmp) / "rebuilt")
        diff = max_abs_diff(hf, Path(tmp) / "rebuilt")
    # evaluate@P logs the validation metrics into the training run it evaluates: the recorded run's
    # and the rebuilt run's, side by side
    recorded, rebuilt = (c.get_run(r).data.metrics for r in (tags["ppg.run_id"], run["mlflow_run_id"]))
    names = sorted(k for k in set(recorded) | set(rebuilt) if k.startswith("validation."))
    metrics = {k: [recorded.get(k), rebuilt.get(k)] for k in names}
    identical = bool(recorded_files) and recorded_files == rebuilt_files
    return {"model": name, "version": str(version), "policy": policy, "weights_identical": identical,
            "max_abs_weight_diff": diff, "files": {f: [recorded_files.get(f), rebuilt_files.get(f)]
                                                   for f in sorted(set(recorded_files) | set(rebuilt_files))},
            "metrics": metrics, "metrics_identical": all(a == b for a, b in metrics.values()),
            "mlflow_run_id": run.get("mlflow_run_id"), "recorded_run_id": tags.get("ppg.run_id"),
            "code_identical": code.get("code_hash") == code_now, "steps_trained": run.get("steps"),
            "steps_recorded": int(tags["ppg.steps"]) if tags.get("ppg.steps") else None,
            "code_hash": [code.get("code_hash"), code_now], "commit": code.get("commit"),
            "environment_mismatch": mismatch, "stages": stages, "into": str(into)}
