"""Reading a params file (params.yaml or an overlay) strictly, and checking every value against
its config field's type, so a bad file is refused before anything runs, with one line naming the
file, the key and what was expected.

Refused: text that is not UTF-8; YAML that does not parse (tab indentation among it), with its
line and column; a key given twice in one mapping (YAML's loaders keep the last one silently);
anchors and aliases (`&a` / `*a`: params never need them, and an alias bomb would expand to
gigabytes); a top level that is not a mapping; a value of the wrong type (`max_steps: "10"`, a
list where a number belongs). Nothing is expanded or printed whole: a value in a message is cut
to 60 characters.
"""

import dataclasses
import types
import typing
from pathlib import Path

import yaml


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Anchored(yaml.YAMLError):
    def __init__(self, mark):
        self.mark = mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases as it meets them (before any is expanded) and a
    key given twice in one mapping."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise _Anchored(event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {short(key)} appears twice in one mapping (first on line "
                                f"{seen[key] + 1}); keep one", mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path, text: str | None = None) -> dict:
    """The mapping a params file holds ({} for an empty file); ValueError naming file, line and
    column for anything module doc refuses."""
    path = Path(path)
    if text is None:
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 at byte {e.start}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except _Anchored as e:
        m = e.mark
        raise ValueError(f"{path}: line {m.line + 1} column {m.column + 1}: YAML anchors and aliases "
                         f"(&name, *name) are not accepted in params files; write the values out") from None
    except yaml.YAMLError as e:
        m = getattr(e, "problem_mark", None)
        where = f"line {m.line + 1} column {m.column + 1}: " if m else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        lines = text.splitlines()
        line = lines[m.line] if m is not None and m.line < len(lines) else ""
        hint = " (indent with spaces: YAML does not allow tabs)" if "\t" in line or "tab" in problem else ""
        raise ValueError(f"{path}: {where}not valid YAML: {problem}{hint}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of sections (judge:, train:, ...) at the top, got a "
                         f"{type(data).__name__}")
    return data


def _name(t) -> str:
    if isinstance(t, type):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
                "list": "a list", "dict": "a mapping"}.get(t.__name__, t.__name__)
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _name(a) for a in args)
    origin = typing.get_origin(t)
    if origin in (list, dict) and args:
        inner = args[-1]
        plural = {str: "strings", int: "integers", float: "numbers", bool: "true/false values"}.get(inner)
        return f"{_name(origin)} of {plural or _name(inner) + ' values'}"
    return _name(origin or t)


def fits(value, t) -> bool:
    """Whether value is of annotation t (int for float allowed; bool never for a number)."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if t is typing.Any or t is object:
        return True
    if t is type(None):
        return value is None
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list or t is list:
        return isinstance(value, list) and (not args or all(fits(v, args[0]) for v in value))
    if origin is dict or t is dict:
        return isinstance(value, dict) and (not args or all(fits(v, args[-1]) for v in value.values()))
    if isinstance(t, type):
        return isinstance(value, t)
    return True  # an annotation this check does not know: left to the field's own validation


def check_fields(cls, data: dict, where: str, key: str = "") -> None:
    """ValueError naming the file (where) and the key (key.field) when a value does not fit its
    field's annotated type."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in data and not dataclasses.is_dataclass(hints.get(f.name)) and not fits(data[f.name],
                                                                                           hints[f.name]):
            v = data[f.name]
            hint = (" (a number in quotes, or written like 1e-3 without a dot, is text to YAML: unquote it, "
                    "write 1.0e-3)" if isinstance(v, str) and _number(v) is not None else "")
            raise ValueError(f"{where}: {key + '.' if key else ''}{f.name}: expected {_name(hints[f.name])}, got "
                             f"{type(v).__name__} {short(v)}{hint}")


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return None
