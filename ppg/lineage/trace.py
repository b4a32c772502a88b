"""Which params a command reads: with PPG_TRACE_PARAMS=FILE set, every config field the command's
code reads is appended to FILE as one JSON line at exit ({"command": ..., "read": [section.field,
...]}). The test of dvc.yaml's `params:` runs the pipeline's stages with it and checks that each
stage declares every field its command read (a param a stage reads but does not declare is a
change DVC does not see).

Reads by dataclasses' own machinery (replace, asdict, the generated __eq__) and by a section's
validation (__post_init__) are not counted: they touch every field, whatever the command uses.
"""

import atexit
import dataclasses
import inspect
import json
import os
import sys

ENV = "PPG_TRACE_PARAMS"
BOOKKEEPING = ("mlflow",)
"""Sections that say where runs are recorded, never what a stage computes: not stage params."""
_MACHINERY = {dataclasses.__file__, "<string>"}


def watch(p, command: str) -> None:
    """Count every read of p's section fields from now on, written at exit."""
    path = os.environ.get(ENV)
    if not path or getattr(watch, "on", False):
        return
    watch.on, read = True, set()
    for f in dataclasses.fields(p):
        section = getattr(p, f.name)
        if not dataclasses.is_dataclass(section):
            continue
        cls, names, name = type(section), {g.name for g in dataclasses.fields(section)}, f.name
        original = cls.__getattribute__

        def get(self, attr, _original=original, _names=names, _name=name):
            if attr in _names:
                caller = inspect.currentframe().f_back.f_code
                if caller.co_filename not in _MACHINERY and caller.co_name != "__post_init__":
                    read.add(f"{_name}.{attr}")
            return _original(self, attr)

        cls.__getattribute__ = get

    def write():
        line = json.dumps({"command": command, "argv": sys.argv[1:], "read": sorted(read)}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write: lines of concurrent processes do not interleave
        finally:
            os.close(fd)

    atexit.register(write)


def declared(stage: dict) -> list[str]:
    """The params a dvc.yaml stage declares: its `params:` and every ${key} its command, deps and
    outs interpolate (DVC sees a changed path as a changed dependency)."""
    import re

    text = json.dumps({k: stage.get(k) for k in ("cmd", "deps", "outs")})
    return [str(x) for x in stage.get("params", [])] + re.findall(r"\$\{([\w.]+)\}", text)


def undeclared(trace_lines: list[dict], stage_params: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per command, the fields it read that its stage's params do not cover (a declared `eval`
    covers `eval.personas`; BOOKKEEPING is never required)."""
    stage_params = {k: [*v, *BOOKKEEPING] for k, v in stage_params.items()}
    gaps = {}
    for t in trace_lines:
        declared = stage_params.get(t["command"])
        if declared is None:
            continue
        gap = [r for r in t["read"] if not any(r == d or r.startswith(d + ".") for d in declared)]
        if gap:
            gaps[t["command"]] = sorted(set(gaps.get(t["command"], [])) | set(gap))
    return gaps
