"""The house rules of the code, checked on its syntax trees: names shared across modules are
public, no module reaches into another's (or a library's) underscore attributes, the packages of
ppg/ import each other without a cycle, and the library never imports Prefect when it loads."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted([*(ROOT / "ppg").rglob("*.py"), *(ROOT / "flows").rglob("*.py")])
EVERYTHING = LIBRARY + sorted([*(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")])


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def ours(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in ("ppg", "flows")


def trees(paths):
    for p in paths:
        yield p, ast.parse(p.read_text(), str(p))


def test_no_module_imports_an_underscore_name_of_another():
    found = [f"{p.relative_to(ROOT)}:{node.lineno}: from {node.module} import {a.name}"
             for p, tree in trees(EVERYTHING) for node in ast.walk(tree)
             if isinstance(node, ast.ImportFrom) and ours(node.module)
             for a in node.names if private(a.name)]
    assert found == []


def test_no_code_reaches_into_an_underscore_attribute_of_another_object():
    """`registry._history(...)`, `client._tracking_client`: only an object's own methods (self,
    cls) touch its underscore attributes."""
    found = [f"{p.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}"
             for p, tree in trees(EVERYTHING) for node in ast.walk(tree)
             if isinstance(node, ast.Attribute) and private(node.attr)
             and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]
    assert found == []


def import_graph() -> dict[str, set[str]]:
    """Package-level imports inside ppg/ (a subpackage is one unit; function-level imports count)."""
    modules = {module_name(p) for p in LIBRARY}

    def unit(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        parts = name.split(".")
        return ".".join(parts[:2]) if (ROOT / Path(*parts[:2])).is_dir() else name

    graph: dict[str, set[str]] = {}
    for p, tree in trees(LIBRARY):
        me = unit(module_name(p))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and ours(node.module) and node.level == 0:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                         for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if ours(a.name)]
            else:
                continue
            graph.setdefault(me, set()).update(unit(n) for n in names if unit(n) != me)
    return graph


def test_the_packages_import_each_other_without_a_cycle():
    graph, done, path = import_graph(), set(), []

    def visit(u):
        if u in path:
            pytest.fail(f"import cycle: {' -> '.join(path[path.index(u):] + [u])}")
        if u in done:
            return
        path.append(u)
        for v in sorted(graph.get(u, ())):
            visit(v)
        path.pop()
        done.add(u)

    for u in sorted(graph):
        visit(u)
    assert {"ppg.cli", "ppg.train", "ppg.judges", "ppg.evaluate", "ppg.sim"} <= set(graph)


def test_the_library_does_not_import_prefect_when_it_loads():
    """ppg/ is a library: Prefect (and the flows built on it) load only inside the commands that
    start flows."""
    def top_names(node):
        return [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]

    found = [f"{p.relative_to(ROOT)}:{node.lineno}" for p, tree in trees(LIBRARY)
             if p.relative_to(ROOT).parts[0] == "ppg" for node in tree.body
             if isinstance(node, (ast.Import, ast.ImportFrom))
             and any((n or "").split(".")[0] in ("prefect", "flows") for n in top_names(node))]
    assert found == []


def test_only_the_simulator_names_its_judge():
    """Rollouts, online training and evaluation take any Judge; the simulator builds its own."""
    found = [str(p.relative_to(ROOT)) for p in LIBRARY
             if "SimJudge" in p.read_text()
             and p.relative_to(ROOT).parts[:2] not in (("ppg", "sim"), ("ppg", "judges"))]
    assert found == []


def test_the_importer_formats_are_one_table():
    """ppg.data.importers.IMPORTERS is the table: FORMATS is its keys, each name reads with its
    own reader, and `ppg import --help` names exactly its formats."""
    from typer.testing import CliRunner

    from ppg.cli import app
    from ppg.data.importers import FORMATS, IMPORTERS

    assert FORMATS == tuple(IMPORTERS)
    # each name reads with its own reader (a swapped pair would keep the count and the keys)
    assert all(imp.read.__name__ == "import_" + fmt.replace("-", "_") for fmt, imp in IMPORTERS.items())
    out = CliRunner().invoke(app, ["import", "--help"], env={"COLUMNS": "300"}).output
    assert " | ".join(FORMATS) in " ".join(out.split())


def test_the_map_names_every_module():
    """docs/layout.md: a package's module is named in its package's row (`stem`), a top-level
    module in some row (`stem.py` or its path)."""
    import re

    rows = {}
    for line in (ROOT / "docs" / "layout.md").read_text().splitlines():
        cells = line.split("|")
        if len(cells) > 3:
            rows[cells[1]] = cells[2]
    missing = []
    for f in sorted((ROOT / "ppg").rglob("*.py")):
        rel = f.relative_to(ROOT)
        if f.name == "__init__.py":
            continue
        if len(rel.parts) == 2:  # ppg/x.py
            if not any(re.search(rf"`(ppg/)?{f.stem}\.py`|\b{f.stem}\.py\b", head) for head in rows):
                missing.append(str(rel))
        else:
            package = f"`{'/'.join(rel.parts[:-1])}/`"
            body = next((b for head, b in rows.items() if package in head), "")
            if f"`{f.stem}`" not in body and f"`{f.stem}` +" not in body:
                missing.append(str(rel))
    assert missing == []
