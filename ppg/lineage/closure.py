"""What code a DVC stage runs: the project modules its `ppg <command>` imports, transitively.

A stage that does not depend on the code it runs keeps a stale output after that code changed,
so dvc.yaml's code deps are generated from this and a test fails on any module a stage runs but
does not depend on (`ppg stage-deps --write` rewrites them).

Read from the source, not from a running process: every `import ppg...` anywhere in a module
counts, function-level imports included (the CLI keeps heavy imports inside functions). Only the
`ppg` CLI modules are read finer: their module-level imports, the command's own function and
the module-level helpers it calls by name, so that one command does not depend on every other
command's imports. Over-counting costs a rerun; under-counting a stale model.
"""

import ast
from pathlib import Path

import yaml

PACKAGE = "ppg"
ROOT = Path(__file__).resolve().parents[2]
CLI = f"{PACKAGE}.cli"


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """ppg.a.b -> ppg/a/b.py or ppg/a/b/__init__.py (None if it is not a module of ours)."""
    base = root.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imported(node: ast.AST, module: str, root: Path) -> set[str]:
    """The project modules the import statements under node name (a name imported from a
    package counts as its submodule when there is one)."""
    found = set()
    f = module_file(module, root)
    package = module if f is not None and f.name == "__init__.py" else module.rpartition(".")[0]
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:  # relative: from its package upwards
                up = package.split(".")[:len(package.split(".")) - (n.level - 1)]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in n.names}
    ours = set()
    for name in found:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            while name and module_file(name, root) is None:  # ppg.x.attr -> ppg.x
                name = name.rpartition(".")[0]
            if name:
                ours.add(name)
    return ours


def _with_packages(names: set[str]) -> set[str]:
    """Importing ppg.a.b runs ppg/__init__.py and ppg/a/__init__.py first."""
    out = set(names)
    for n in names:
        parts = n.split(".")
        out |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return out


def module_closure(start: set[str], root: Path = ROOT) -> set[str]:
    """Every project module reachable from start through imports at any level."""
    seen, todo = set(), list(_with_packages(start))
    while todo:
        name = todo.pop()
        if name in seen or (f := module_file(name, root)) is None:
            continue
        seen.add(name)
        if name == CLI or name.startswith(CLI + "."):  # read finer: see command_closure
            todo += _with_packages(_imported(_top_level(f), name, root))
        else:
            todo += _with_packages(_imported(ast.parse(f.read_text()), name, root))
    return seen


def _top_level(f: Path) -> ast.Module:
    tree = ast.parse(f.read_text())
    tree.body = [s for s in tree.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return tree


def _command_name(fn: ast.FunctionDef) -> str | None:
    """The name an `@app.command(...)` decorator gives fn (Typer's rule: the function's name,
    underscores as dashes, unless the decorator names it)."""
    for d in fn.decorator_list:
        if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command":
            if d.args and isinstance(d.args[0], ast.Constant):
                return d.args[0].value
            named = next((k.value for k in d.keywords if k.arg == "name" and isinstance(k.value, ast.Constant)), None)
            if named is not None:
                return named.value
            return fn.name.replace("_", "-")
    return None


def _cli_functions(root: Path) -> tuple[dict, dict]:
    """The CLI modules' module-level functions, (module, name) -> def, and the names each module
    imports from another CLI module, (module, name) -> (that module, its name)."""
    defs, aliases = {}, {}
    for f in sorted((root / PACKAGE / "cli").glob("*.py")):
        module = f"{CLI}.{f.stem}"
        for n in ast.parse(f.read_text()).body:
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                defs[module, n.name] = n
            elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith(CLI + "."):
                aliases |= {(module, a.asname or a.name): (n.module, a.name) for a in n.names}
    return defs, aliases


def command_closure(command: str, root: Path = ROOT) -> set[str]:
    """The project modules `ppg <command>` imports: the CLI package's module-level imports, the
    command's function and the CLI functions it calls by name (read_params, its own helpers), and
    all they import."""
    defs, aliases = _cli_functions(root)
    start = next((key for key, fn in defs.items() if _command_name(fn) == command), None)
    if start is None:
        raise KeyError(f"ppg {command}: no such command in {root / PACKAGE / 'cli'}")
    used, todo = set(), [start]
    while todo:  # the functions the command calls, and theirs
        key = todo.pop()
        if key in used:
            continue
        used.add(key)
        for n in ast.walk(defs[key]):
            if isinstance(n, ast.Name):
                ref = aliases.get((key[0], n.id), (key[0], n.id))
                if ref in defs:
                    todo.append(ref)
    names = set().union(*(_imported(defs[key], key[0], root) for key in used))
    return module_closure({CLI} | names, root)


def files(modules: set[str], root: Path = ROOT) -> list[str]:
    """The modules' files, relative to root."""
    return sorted(str(module_file(m, root).relative_to(root)) for m in modules)


def as_deps(paths: list[str], root: Path = ROOT) -> list[str]:
    """The files as dvc.yaml deps: a folder whose every .py file (recursively) is in the list is
    named once instead of file by file."""
    chosen, out = set(paths), []

    def covered(d: Path) -> bool:
        return all(str(f.relative_to(root)) in chosen for f in d.rglob("*.py") if "__pycache__" not in f.parts)

    done = set()
    for p in paths:
        d = next((a for a in reversed(Path(p).parents[:-1]) if a != Path(PACKAGE) and covered(root / a)), None)
        entry = str(d) if d is not None else p
        if entry not in done:
            done.add(entry)
            out.append(entry)
    return out


def stage_command(cmd: str) -> str | None:
    """The ppg command a dvc.yaml stage runs (`ppg X ...`, `... $(command -v ppg) X ...`)."""
    words = cmd.split()
    for i, w in enumerate(words[:-1]):
        if w in (PACKAGE, f"{PACKAGE})"):  # `ppg X` or `$(command -v ppg) X`
            return words[i + 1]
    return None


def stages(dvc_yaml: Path) -> dict[str, dict]:
    """dvc.yaml's stages as written (a foreach stage by its `do` template)."""
    out = {}
    for name, st in (yaml.safe_load(dvc_yaml.read_text()).get("stages") or {}).items():
        out[name] = st.get("do", st)
    return out


def stage_order(dvc_yaml: Path, items: list[str], done: tuple[str, ...] = ()) -> list[str]:
    """dvc.yaml's stages in the order they are written, a foreach stage once per item (name@item,
    the items its `foreach` names: returns.policies), less those in done: what the pipeline runs,
    in order, read from the graph rather than written a second time."""
    out = []
    for name, st in (yaml.safe_load(dvc_yaml.read_text()).get("stages") or {}).items():
        if name not in done:
            out += [f"{name}@{i}" for i in items] if "foreach" in st else [name]
    return out


def uncovered(dvc_yaml: Path, root: Path = ROOT) -> dict[str, list[str]]:
    """Per stage, the project files its command runs that none of its deps covers."""
    missing = {}
    for name, st in stages(dvc_yaml).items():
        command = stage_command(st["cmd"])
        if command is None:
            continue
        deps = [str(d).rstrip("/") for d in st.get("deps", [])]
        need = files(command_closure(command, root), root)
        gap = [f for f in need if not any(f == d or f.startswith(d + "/") for d in deps)]
        if gap:
            missing[name] = gap
    return missing


def write_deps(dvc_yaml: Path, root: Path = ROOT) -> dict[str, list[str]]:
    """Rewrite each stage's code deps (entries under ppg/) to its command's closure, keeping its
    other deps and the file's comments. Returns stage -> the code deps written."""
    from ruamel.yaml import YAML

    from ppg.io import atomic_open

    y = YAML()
    y.preserve_quotes, y.width = True, 4096
    y.indent(mapping=2, sequence=4, offset=2)
    doc = y.load(dvc_yaml.read_text())
    written = {}
    for name, st in doc["stages"].items():
        body = st.get("do", st)
        command = stage_command(body["cmd"])
        if command is None:
            continue
        code = as_deps(files(command_closure(command, root), root), root)
        others = [d for d in body.get("deps", []) if not str(d).startswith(PACKAGE + "/") and str(d) != PACKAGE]
        body["deps"] = others + code
        written[name] = code
    with atomic_open(dvc_yaml, "w") as f:
        y.dump(doc, f)
    return written
