"""ppg-study: the K study grid (ppg.study.sim) as a Prefect flow, one task per cell, in MLflow.

Cells run one at a time (2 CPU cores gain nothing from parallel training); a finished cell is
read back, not retrained, so a stopped study resumes. One parent MLflow run per study run; each
cell's training run is its child (tags ppg.policy, ppg.k, ...), with the evaluation logged in it.
"""

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ppg import tracking
from ppg.io import atomic_open
from ppg.overlay import merged_params
from ppg.study.sim import cells, prepare_base, run_cell, summary, world


@contextmanager
def study_run(workspace: str, params: str, name: str, section, overlay: str = ""):
    """In the workspace, with params loaded and a parent MLflow run open (every cell's training
    run becomes its child through PPG_PARENT_RUN_ID): yields (params, client, parent run id). The
    parent ends FINISHED, or FAILED on an exception; the directory and environment are restored."""
    start, before = os.getcwd(), os.environ.get(tracking.PARENT_ENV)
    os.chdir(workspace)
    try:
        p = merged_params(Path(params), Path(overlay) if overlay else None)
        c = tracking.client(p.mlflow)
        os.environ.pop(tracking.PARENT_ENV, None)
        parent = tracking.open_run(c, p.mlflow, name=name, tags={"ppg.stage": name},
                                   params={name: json.dumps(section(p).__dict__, default=str)})
        os.environ[tracking.PARENT_ENV] = parent
        try:
            yield p, c, parent
        except BaseException:
            c.set_terminated(parent, "FAILED")
            raise
        c.set_terminated(parent, "FINISHED")
    finally:
        if before is None:
            os.environ.pop(tracking.PARENT_ENV, None)
        else:
            os.environ[tracking.PARENT_ENV] = before
        os.chdir(start)


def _write_summary(c, parent: str, root: Path, s: dict) -> None:
    with atomic_open(root / "summary.json") as f:
        json.dump(s, f, indent=1)
    c.log_dict(parent, s, "summary.json")


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
def ppg_study(workspace: str = ".", params: str = "params.yaml", limit: int = 0, overlay: str = "") -> dict:
    """Run (or resume) the grid of params.yaml's study section (with the overlay merged in, if
    given); limit > 0 runs the first cells only."""
    with study_run(workspace, params, "study", lambda p: p.study, overlay) as (p, c, parent):
        root = Path(p.study.out)
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
        s["world"] = world(p)
        _write_summary(c, parent, root, s)
        print(f"study: {len(results)} of {len(grid)} cells ({s['cells_run']} trained now, "
              f"{s['seconds']:.0f} s in cells, {s['wall_seconds']:.0f} s wall); summary in {root / 'summary.json'}")
        return s


@task(cache_policy=NO_CACHE)
def real_cell(p, cell: dict, root: str, data: str) -> dict:
    from ppg.study.real import run_real_cell

    r = run_real_cell(p, cell, Path(root), Path(data))
    get_run_logger().info("%s: %s, %d turns scored", cell["id"], "done before" if r["skipped"] else
                          f"{r['seconds']:.0f} s", r["turns"])
    return r


@flow(name="ppg-study-real", log_prints=True)
def ppg_study_real(data: str, workspace: str = ".", params: str = "params.yaml", limit: int = 0) -> dict:
    """The real-data part of the K study (study.real of params.yaml) on Consistent-LLMs files in data."""
    from ppg.study.real import real_cells, real_summary

    data = str(Path(data).resolve())
    with study_run(workspace, params, "study-real", lambda p: p.study.real) as (p, c, parent):
        root = Path(p.study.real.out)
        c.log_param(parent, "data", data)
        t0 = time.perf_counter()
        grid = real_cells(p.study)
        results = [real_cell.with_options(task_run_name=cell["id"])(p, cell, str(root), data)
                   for cell in (grid[:limit] if limit else grid)]
        s = real_summary(p, root, results)
        s["cells_run"] = sum(not r["skipped"] for r in results)
        s["wall_seconds"] = time.perf_counter() - t0
        _write_summary(c, parent, root, s)
        print(f"study-real: {len(results)} of {len(grid)} cells ({s['cells_run']} trained now, "
              f"{s['wall_seconds']:.0f} s wall); summary in {root / 'summary.json'}")
        return s
