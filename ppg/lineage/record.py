"""The record of a pipeline run: everything that made its outputs, logged to its parent MLflow run
under `lineage/` so that a registered version can be audited and rebuilt from the registry alone.

    lineage/params.yaml      the merged config the stages read (after any overlay)
    lineage/overlay.yaml     the overlay merged into it, when there was one
    lineage/dvc.lock         the stage graph's state after the run (every input's and output's md5)
    lineage/sources.json     what data.source read, by content; models.json: the judge's models
    lineage/code.json        the commit, whether a remote branch holds it, the diff's size, the
                             hash of the ppg package actually imported, the DVC remote's address
    lineage/code.diff        `git diff HEAD` of tracked files, when the tree was dirty
    lineage/environment.json what decides bit-identity: torch threads, CPU capability, Python,
                             library versions and a hash of every installed package
    lineage/packages.txt     the installed packages, name==version
"""

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path

import yaml

FOLDER = "lineage"
RECORDED_WHOLE = ("params.yaml", "dvc.lock", ".gitignore")


def git(*args, cwd=".") -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def git_commit(cwd=".") -> str | None:
    r = git("rev-parse", "--verify", "-q", "HEAD", cwd=cwd)
    return r.stdout.strip() if r.returncode == 0 else None


def lock_outs(lock: dict | None, stages=None) -> dict[str, str | None]:
    """Output path -> md5 in a parsed dvc.lock, of every stage or of the named ones."""
    recorded = (lock or {}).get("stages", {})
    return {o["path"].rstrip("/"): o.get("md5") for s in (recorded if stages is None else stages)
            for o in recorded.get(s, {}).get("outs", [])}


def dvc_md5(path: str, lock: Path = Path("dvc.lock")) -> str | None:
    """The md5 dvc.lock records for an output path (the dataset version a model was trained on)."""
    return lock_outs(yaml.safe_load(lock.read_text())).get(path.rstrip("/")) if lock.exists() else None


def read_record(c, run_id: str) -> dict[str, str]:
    """The record a pipeline run logged under FOLDER: file name -> text (empty when it logged none)."""
    import tempfile

    if not c.list_artifacts(run_id, FOLDER):
        return {}
    with tempfile.TemporaryDirectory(prefix="ppg-record-") as tmp:
        root = Path(c.download_artifacts(run_id, FOLDER, tmp))
        return {f.name: f.read_text() for f in root.iterdir() if f.is_file()}


def dvc_remote(root: Path = Path(".")) -> dict:
    """The default DVC remote (.dvc/config, .dvc/config.local over it) by an address a fresh clone
    elsewhere can reach: a relative local path (the project's default, `../.dvc-remote`) is made
    absolute, since DVC resolves it against the .dvc folder of whichever clone reads it."""
    import configparser

    cfg = configparser.ConfigParser()
    for f in (Path(root) / ".dvc/config", Path(root) / ".dvc/config.local"):
        if f.exists():  # DVC indents its keys, which configparser would read as continued lines
            cfg.read_string("\n".join(line.strip() for line in f.read_text().splitlines()), str(f))
    remotes = {s.split('"')[1]: cfg[s].get("url") for s in cfg.sections() if s.strip("'").startswith('remote "')}
    name = cfg.get("core", "remote", fallback=None)
    name = name if name in remotes else next(iter(remotes), None)
    if name is None:
        return {"name": None, "url": None}
    url = remotes[name]
    if url and "://" not in url and not os.path.isabs(url):
        url = str((Path(root) / ".dvc" / url).resolve())
    return {"name": name, "url": url}


def code_hash() -> str:
    """The Python source of the ppg package this process imported (which may be an installed copy,
    not the workspace's): a changed loss or trainer must not resume, as finished, a checkpoint the
    old code made, and a rebuild must run the code the record names."""
    from ppg.io import content_hash

    return content_hash(*sorted(Path(__file__).parents[1].rglob("*.py")))


def code_state(cwd=".") -> tuple[dict, str]:
    """(code.json's content, the diff of tracked files or "")."""
    import ppg

    commit = git_commit(cwd)
    # params.yaml and dvc.lock are recorded whole; DVC's .gitignore files are bookkeeping
    rest = [".", *(f":(exclude,glob)**/{x}" for x in RECORDED_WHOLE)]
    diff = git("diff", "HEAD", "--binary", "--", *rest, cwd=cwd).stdout if commit else ""
    untracked = git("ls-files", "--others", "--exclude-standard", cwd=cwd).stdout.split()
    for f in (u for u in untracked if u.startswith("ppg/") and u.endswith(".py")):  # new code the stages run
        diff += git("diff", "--no-index", "--binary", "/dev/null", f, cwd=cwd).stdout if commit else ""
    remote = git("branch", "-r", "--contains", commit, cwd=cwd).stdout.split() if commit else []
    origin = git("remote", "get-url", "origin", cwd=cwd)
    return {"commit": commit, "dirty": bool(diff), "diff_bytes": len(diff.encode()),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
            "untracked": untracked[:200], "remote_branches": remote, "pushed": bool(remote),
            "origin": origin.stdout.strip() if origin.returncode == 0 else None,
            "package": str(Path(ppg.__file__).parent), "code_hash": code_hash(),
            "dvc_remote": dvc_remote(Path(cwd))}, diff


def packages() -> list[str]:
    from importlib.metadata import distributions

    return sorted({f"{d.metadata['Name']}=={d.version}" for d in distributions() if d.metadata["Name"]},
                  key=str.lower)


def environment(pk: list[str] | None = None) -> dict:
    """What decides whether a CPU rerun is bit-identical: the thread count (the order of float
    sums in a matmul), the CPU instruction set torch dispatches to, and the library versions
    (pk: packages(), when the caller has it already)."""
    import torch

    pk = packages() if pk is None else pk
    versions = {n: v for n, v in (x.split("==") for x in pk)
                if n.lower() in ("torch", "transformers", "deepspeed", "peft", "numpy", "mlflow", "dvc")}
    return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
            "python": platform.python_version(), "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": versions, "packages_sha256": hashlib.sha256("\n".join(pk).encode()).hexdigest()}


def run_environment() -> dict:
    """Tags for a training run: what decides whether its weights are bit-identical on a rebuild."""
    import torch

    return {"ppg.env.torch_threads": str(torch.get_num_threads()),
            "ppg.env.cpu_capability": torch.backends.cpu.get_cpu_capability()}


def environment_mismatch(recorded: dict, now: dict) -> list[str]:
    """What differs between two environment records, in words (empty: nothing that matters)."""
    out = []
    for k in ("torch_threads", "cpu_capability", "machine", "python", "cuda", "gpu", "packages_sha256"):
        if recorded.get(k) != now.get(k):
            out.append(f"{k}: recorded {recorded.get(k)!r}, here {now.get(k)!r}")
    for k, v in (recorded.get("versions") or {}).items():
        if (now.get("versions") or {}).get(k) != v:
            out.append(f"{k}: recorded {v}, here {(now.get('versions') or {}).get(k)}")
    return out


def log_start(c, run_id: str, overlay: str = "") -> dict:
    """At the start of a run (after the overlay is merged): params, overlay, code and environment.
    Returns code.json's content."""
    code, diff = code_state()
    c.log_text(run_id, Path("params.yaml").read_text(), f"{FOLDER}/params.yaml")
    if overlay:
        c.log_text(run_id, Path(overlay).read_text(), f"{FOLDER}/overlay.yaml")
    c.log_dict(run_id, code, f"{FOLDER}/code.json")
    if diff:
        c.log_text(run_id, diff, f"{FOLDER}/code.diff")
    pk = packages()
    env = environment(pk)
    c.log_dict(run_id, env, f"{FOLDER}/environment.json")
    c.log_text(run_id, "\n".join(pk) + "\n", f"{FOLDER}/packages.txt")
    tags = {"ppg.git_commit": code["commit"] or "", "ppg.code_hash": code["code_hash"],
            "ppg.code_dirty": str(code["dirty"]).lower(), "ppg.dvc_remote": code["dvc_remote"]["url"] or "",
            "ppg.overlay": overlay, "ppg.env.torch_threads": str(env["torch_threads"]),
            "ppg.env.cpu_capability": env["cpu_capability"], "ppg.env.packages_sha256": env["packages_sha256"]}
    for k, v in tags.items():
        c.set_tag(run_id, k, v)
    return code


def log_end(c, run_id: str) -> None:
    """At the end of a run: dvc.lock as it stands, and the input manifests."""
    for rel in ("dvc.lock", "data/sources.json", "data/models.json"):
        if Path(rel).exists():
            c.log_text(run_id, Path(rel).read_text(), f"{FOLDER}/{Path(rel).name}")


def input_datasets(paths: dict[str, str], remote: dict | None = None) -> list:
    """MLflow dataset inputs for a training run: context -> path, each with the md5 dvc.lock
    records for it (DVC's own digest, so `dvc pull` finds the same bytes) and the remote it was
    pushed to; a path DVC does not track is digested by content and says so."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from ppg.io import content_hash

    remote = remote if remote is not None else dvc_remote()
    out = []
    for context, path in paths.items():
        if not Path(path).exists():
            continue
        md5 = dvc_md5(path)
        digest = md5 or content_hash(path)
        source = {"path": path, "dvc_md5": md5, "remote": remote.get("url") if md5 else None}
        out.append(DatasetInput(Dataset(name=path, digest=digest[:36], source_type="dvc" if md5 else "local",
                                        source=json.dumps(source)),
                                tags=[InputTag("mlflow.data.context", context)]))
    return out
