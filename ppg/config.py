"""params.yaml: the one config tree read by the CLI, DVC stages (`params:` in dvc.yaml) and flows.

Each section is a dataclass; the docstring under each field is its documentation. Unknown keys
are errors (a typo must not silently fall back to a default).
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ppg.returns import BASELINES, parse_policy_id


@dataclass
class ReturnsConfig:
    policies: list[str] = field(default_factory=lambda: ["greedy", "k2", "k3", "full", "segment"])
    """Policy ids to compute: greedy, k<K> (K-step lookahead), full, segment."""
    gamma: float = 1.0
    """Discount inside the credited subset, in (0, 1]; 1.0 = the paper's undiscounted sums."""
    segment_length: int = 3
    """Segment policy: turns per segment for dialogues without meta.segment_starts."""
    baseline: str = "none"
    """none | batch_mean | turn_mean | group_loo (groups = dialogues sharing a persona)."""
    standardize: bool = False
    """Divide the (baselined) weights by their std; with baseline none, also centre them."""

    def __post_init__(self):
        for p in self.policies:
            parse_policy_id(p)
        if self.baseline not in BASELINES:
            raise ValueError(f"returns.baseline: {self.baseline!r} is not one of {BASELINES}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"returns.gamma: must be in (0, 1], got {self.gamma}")
        if self.segment_length < 1:
            raise ValueError(f"returns.segment_length: must be >= 1, got {self.segment_length}")


@dataclass
class Params:
    returns: ReturnsConfig = field(default_factory=ReturnsConfig)
    """Partial returns and weight shaping (ppg.returns)."""


def _build(cls, data, where):
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            value = _build(sub, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read params.yaml (defaults for whatever it leaves out); errors name the file and key."""
    path = Path(path)
    if not path.exists():
        return Params()
    data = yaml.safe_load(path.read_text()) or {}
    return _build(Params, data, str(path))
