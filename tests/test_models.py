"""The machine-wide model cache (ppg.models): built once, never replaced under a reader."""

import multiprocessing
import time
from pathlib import Path

from ppg.models import atomic_folder, built_once


def slow_build(target: Path) -> Path:
    """Stands in for build_tiny: seconds of work, then an atomic rename; logs each build."""
    with open(target.parent / "builds.log", "a") as log:
        log.write("built\n")

    def fill(tmp):
        time.sleep(1.0)
        (Path(tmp) / "config.json").write_text("{}")

    return atomic_folder(target, fill)


def resolve_then_read(target: str, out: str):
    folder = built_once(Path(target), "config.json", slow_build)
    time.sleep(0.5)  # a reader still copying when a second builder would have replaced the folder
    Path(out).write_text((folder / "config.json").read_text())


def test_concurrent_processes_build_the_cache_once_and_all_read_it(tmp_path):
    target = tmp_path / "cache" / "models" / "tiny"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=resolve_then_read, args=(str(target), str(tmp_path / f"read{i}")))
             for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert (target.parent / "builds.log").read_text() == "built\n"
    assert all((tmp_path / f"read{i}").read_text() == "{}" for i in range(3))


def test_a_built_cache_is_returned_without_building(tmp_path):
    target = tmp_path / "tiny"
    target.mkdir()
    (target / "config.json").write_text("{}")
    assert built_once(target, "config.json", lambda t: 1 / 0) == target
