"""`ppg run --params OVERLAY`: merge an overlay (e.g. params.tiny.yaml) into params.yaml key by
key, keeping params.yaml's comments (a ruamel round trip; `git checkout params.yaml` undoes it).

A mapping merges into a mapping; any other value replaces; `key: null` REMOVES the key, so an
overlay can drop what it does not want (e.g. `registry: {thresholds: {online.reward: null}}` for
an offline-mode run), and the field falls back to its default. So an overlay cannot SET a value
to null: where the default is not null (inside a data mapping such as study.weights.raw, the
removed key is simply absent), edit params.yaml instead. Both files are read strictly first
(ppg.config_check.read_yaml: parse errors, duplicated keys and aliases refused with file, line
and column), and the merged tree is validated field by field before anything is written: a bad
overlay leaves params.yaml byte-identical.
"""

import io
from pathlib import Path

from ppg.config import Params, load_params
from ppg.config_check import read_yaml
from ppg.io import atomic_open


def _merge(base, over):
    for k, v in over.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def merged_text(params: Path, overlay: Path) -> str:
    """params.yaml with the overlay merged in, as text, validated (raises ValueError naming both)."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes, rt.width = True, 110
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    over = read_yaml(overlay)  # strict reads first: the round trip below trusts both files
    read_yaml(params)
    base = rt.load(params.read_text()) or {}
    _merge(base, over)
    text = io.StringIO()
    rt.dump(base, text)
    Params.from_dict(read_yaml(f"{params} + {overlay}", text.getvalue()), f"{params} + {overlay}")
    return text.getvalue()


def merged_params(params: Path, overlay: Path | None) -> Params:
    """The validated tree of params with the overlay merged in (params alone for no overlay)."""
    if not overlay:
        return load_params(params)
    return Params.from_dict(read_yaml(f"{params} + {overlay}", merged_text(Path(params), Path(overlay))),
                            f"{params} + {overlay}")


def apply_overlay(params: Path, overlay: Path) -> None:
    """Write the merged, validated tree over params (atomically)."""
    text = merged_text(Path(params), Path(overlay))
    with atomic_open(params) as f:
        f.write(text)
