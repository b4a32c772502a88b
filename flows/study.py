"""ppg-study: the K study grid (ppg.study) as a Prefect flow, one task per cell, in MLflow.

Cells run one at a time (2 CPU cores gain nothing from parallel training); a finished cell is
read back, not retrained, so a stopped study resumes. One parent MLflow run per study run; each
cell's training run is its child (tags ppg.policy, ppg.k, ...), with the evaluation logged in it.
"""

import json
import os
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ppg import tracking
from ppg.config import load_params
from ppg.io import atomic_open
from ppg.study import cells, prepare_base, run_cell, summary


@task(cache_policy=NO_CACHE)
def study_base(p, root: str) -> str:
    """Behaviour-clone the study base once (read back when it exists)."""
    return str(prepare_base(p, Path(root)))


@task(cache_policy=NO_CACHE)
def study_cell(p, cell: dict, root: str) -> dict:
    r = run_cell(p, cell, Path(root))
    get_run_logger().info("%s: %s reward %.3f consistency %.3f coverage %.3f invented %s", cell["id"],
                          "done before" if r["skipped"] else f"{r['seconds']:.0f} s,", r["online"]["reward"]["mean"],
                          r["online"]["consistency"]["mean"], r["online"]["coverage"]["mean"],
                          r["decisions"]["invented"])
    return r


@flow(name="ppg-study", log_prints=True)
def ppg_study(workspace: str = ".", params: str = "params.yaml", limit: int = 0) -> dict:
    """Run (or resume) the grid of params.yaml's study section; limit > 0 runs the first cells only."""
    start = os.getcwd()
    os.chdir(workspace)
    before = os.environ.get(tracking.PARENT_ENV)
    try:
        p = load_params(params)
        root = Path(p.study.out)
        c = tracking.client(p.mlflow)
        os.environ.pop(tracking.PARENT_ENV, None)
        parent = tracking.open_run(c, p.mlflow, name="study", tags={"ppg.stage": "study"},
                                   params={"study": json.dumps(p.study.__dict__, default=str)})
        os.environ[tracking.PARENT_ENV] = parent  # every cell's training run becomes its child
        t0 = time.perf_counter()
        study_base(p, str(root))
        base_seconds = time.perf_counter() - t0
        grid = cells(p.study)
        results = [study_cell.with_options(task_run_name=cell["id"])(p, cell, str(root))
                   for cell in (grid[:limit] if limit else grid)]
        s = summary(results)
        s["cells_run"] = sum(not r["skipped"] for r in results)
        s["seconds"] = sum(r["seconds"] for r in results if not r["skipped"])
        s["wall_seconds"] = time.perf_counter() - t0  # this run: base (if trained now), data, cells, summary
        s["base_seconds"] = base_seconds
        with atomic_open(root / "summary.json") as f:
            json.dump(s, f, indent=1)
        c.log_dict(parent, s, "summary.json")
        c.set_terminated(parent, "FINISHED")
        print(f"study: {len(results)} of {len(grid)} cells ({s['cells_run']} trained now, "
              f"{s['seconds']:.0f} s in cells, {s['wall_seconds']:.0f} s wall); summary in {root / 'summary.json'}")
        return s
    finally:
        if before is None:
            os.environ.pop(tracking.PARENT_ENV, None)
        else:
            os.environ[tracking.PARENT_ENV] = before
        os.chdir(start)


@task(cache_policy=NO_CACHE)
def real_cell(p, cell: dict, root: str, data: str) -> dict:
    from ppg.study_real import run_real_cell

    r = run_real_cell(p, cell, Path(root), Path(data))
    get_run_logger().info("%s: %s, %d turns scored", cell["id"], "done before" if r["skipped"] else
                          f"{r['seconds']:.0f} s", r["turns"])
    return r


@flow(name="ppg-study-real", log_prints=True)
def ppg_study_real(data: str, workspace: str = ".", params: str = "params.yaml", limit: int = 0) -> dict:
    """The real-data part of the K study (study.real of params.yaml) on Consistent-LLMs files in data."""
    from ppg.study_real import real_cells, real_summary

    start = os.getcwd()
    data = str(Path(data).resolve())
    os.chdir(workspace)
    before = os.environ.get(tracking.PARENT_ENV)
    try:
        p = load_params(params)
        root = Path(p.study.real.out)
        c = tracking.client(p.mlflow)
        os.environ.pop(tracking.PARENT_ENV, None)
        parent = tracking.open_run(c, p.mlflow, name="study-real", tags={"ppg.stage": "study-real"},
                                   params={"study.real": json.dumps(p.study.real.__dict__, default=str), "data": data})
        os.environ[tracking.PARENT_ENV] = parent
        t0 = time.perf_counter()
        grid = real_cells(p.study)
        results = [real_cell.with_options(task_run_name=cell["id"])(p, cell, str(root), data)
                   for cell in (grid[:limit] if limit else grid)]
        s = real_summary(p, root, results)
        s["cells_run"] = sum(not r["skipped"] for r in results)
        s["wall_seconds"] = time.perf_counter() - t0
        with atomic_open(root / "summary.json") as f:
            json.dump(s, f, indent=1)
        c.log_dict(parent, s, "summary.json")
        c.set_terminated(parent, "FINISHED")
        print(f"study-real: {len(results)} of {len(grid)} cells ({s['cells_run']} trained now, "
              f"{s['wall_seconds']:.0f} s wall); summary in {root / 'summary.json'}")
        return s
    finally:
        if before is None:
            os.environ.pop(tracking.PARENT_ENV, None)
        else:
            os.environ[tracking.PARENT_ENV] = before
        os.chdir(start)
