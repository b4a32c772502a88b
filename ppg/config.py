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
    segments: dict = field(default_factory=lambda: {"length": 3})
    """Segment policy's partition of each speaker's turns: {length: L} (fixed-length segments)
    or {from: meta.segment_starts} (per-dialogue starts, e.g. the simulator's probe windows)."""
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
        ok = (self.segments == {"from": "meta.segment_starts"} or (
            set(self.segments) == {"length"} and isinstance(self.segments["length"], int)
            and not isinstance(self.segments["length"], bool) and self.segments["length"] >= 1))
        if not ok:
            raise ValueError(f"returns.segments: expected {{length: L >= 1}} or "
                             f"{{from: meta.segment_starts}}, got {self.segments}")


@dataclass
class DataConfig:
    source: str = "jsonl:data/examples/dialogues.jsonl"
    """What `ppg import --source` reads: FORMAT:PATH[,PATH...] (formats: consistent-llms,
    synthetic-persona-chat, chitchat, jsonl; `chitchat:-` = the packaged corpus)."""
    imported: str = "data/imported"
    """Folder of the imported canonical dataset (dialogues.jsonl + summary.json); a DVC output."""


@dataclass
class ValidateConfig:
    min_text_chars: int = 1
    """Shortest line accepted (an empty line is a generation or import failure)."""
    max_text_chars: int = 4000
    """Longest line accepted."""
    max_null_share: float = 0.1
    """Largest share of evaluated turns without a judge verdict (null reward)."""
    max_duplicate_share: float = 0.05
    """Largest share of lines that repeat an earlier line of the same speaker in the dialogue."""
    label_balance: dict = field(default_factory=lambda: {
        "consistent-llms/chatting": [0.0, 0.15], "consistent-llms/education": [0.05, 0.5],
        "consistent-llms/therapy": [0.35, 0.85]})
    """Bounds on the contradiction share (reward < 0.5) among judged turns, keyed SOURCE/DOMAIN
    (or SOURCE/* for every domain of a source); real therapy is ~62% contradictions, chatting ~3%.
    Groups with no entry are unbounded."""

    def __post_init__(self):
        for key, b in self.label_balance.items():
            if not (isinstance(b, (list, tuple)) and len(b) == 2 and 0 <= b[0] <= b[1] <= 1):
                raise ValueError(f"validate.label_balance[{key!r}]: expected [low, high] in [0, 1], got {b}")


@dataclass
class ModelConfig:
    spec: str = "tiny"
    """tiny (tests) | smollm2-135m (real, offline from PyPI) | a local folder | ORG/NAME on a hub."""


@dataclass
class BuildConfig:
    out: str = "data/built"
    """Folder of {split}.parquet + stats.json; a DVC output."""
    max_length: int = 2048
    """Longest token sequence; longer dialogues are cut into windows (persona + recent history)."""
    splits: dict = field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    """Split ratios by dialogue count; whole persona groups go to one split."""
    folds: int = 5
    """Persona-grouped folds (the `fold` column) for k-fold evaluation of small real sets."""
    seed: int = 0
    """Seed of the persona-group shuffle behind splits and folds."""

    def __post_init__(self):
        if self.max_length < 16:
            raise ValueError(f"build.max_length: must be >= 16, got {self.max_length}")
        if not self.splits or any(not isinstance(v, (int, float)) or v < 0 for v in self.splits.values()) \
                or sum(self.splits.values()) <= 0:
            raise ValueError(f"build.splits: expected non-negative ratios, got {self.splits}")
        if self.folds < 1:
            raise ValueError(f"build.folds: must be >= 1, got {self.folds}")


@dataclass
class Params:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model (ppg.models)."""
    build: BuildConfig = field(default_factory=BuildConfig)
    """Token sequences, windows, splits (ppg.data.build)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where data comes from and where imported data goes."""
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    """Thresholds of the validation gate (ppg.data.validate)."""
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
