"""The judges `judge.kind` (and `eval.judge.kind`) can name, in one table.

Each entry says how the judge is built from its config section, which model it is (without
building it), and what it reads by content (the `sources` stage writes that to data/models.json,
so a retrained reward model re-runs the stages that judge). A new judge is a class with the
Judge protocol (ppg.judges.base: `judge(dialogues)`, `counts`, `identity()`) and one entry here;
`judge.kind` accepts exactly the table's names.

"The same judge" has one definition, `same_judge` on identities: the same kind and model (an
LLM's model name, a reward model's weights fingerprint) and, where both record it, the same
endpoint (an LLM's base URL; verdicts recorded before it was recorded match any). The config
check (a grader must not be the training judge: `same_judge(identity_of(a), identity_of(b))`)
and the independence check on recorded verdicts (`lines[].judge.by`) both use it.
"""

import json
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class JudgeKind:
    build: Callable  # (judge section, progress: bool) -> a Judge
    who: Callable  # judge section -> what its identity() will record to tell it apart (WHO's fields)
    reads: Callable  # judge section -> what it reads, by content or address, for data/models.json


def _labels(cfg, progress):
    from ppg.judges.base import LabelJudge

    return LabelJudge()


def _llm(cfg, progress):
    from ppg.judges.cache import VerdictCache
    from ppg.judges.llm import LLMJudge

    return LLMJudge(cfg, cache=VerdictCache(cfg.cache), keep_logged=not cfg.overwrite, progress=progress)


def _reward_model(cfg, progress):
    from ppg.judges.reward_model import RewardModelJudge

    return RewardModelJudge(cfg, keep_logged=not cfg.overwrite)


def _rm_model(cfg) -> str:
    """A reward model's weights fingerprint from its card; its folder while it is not trained yet."""
    card = Path(cfg.reward_model.path) / "judge.json"
    try:
        return json.loads(card.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return str(cfg.reward_model.path)


def _rm_reads(cfg) -> dict:
    from ppg.io import content_hash

    path = Path(cfg.reward_model.path)
    return {"path": str(path), "content": content_hash(path) if path.exists() else None}


JUDGES = {
    "labels": JudgeKind(_labels, who=lambda cfg: {}, reads=lambda cfg: {}),
    "llm": JudgeKind(_llm, who=lambda cfg: {"model": cfg.model, "base_url": endpoint(cfg.base_url)},
                     reads=lambda cfg: {"base_url": cfg.base_url, "model": cfg.model}),
    "reward-model": JudgeKind(_reward_model, who=lambda cfg: {"model": _rm_model(cfg)}, reads=_rm_reads),
}
WHO = ("model", "base_url")
"""What tells two judges of one kind apart (prompt wording and knobs do not)."""


def endpoint(base_url: str) -> str:
    """An endpoint as identities record it: without credentials or a trailing slash."""
    u = urlsplit(base_url.strip())
    return urlunsplit((u.scheme, u.hostname + (f":{u.port}" if u.port else "") if u.hostname else u.netloc,
                       u.path.rstrip("/"), "", ""))


def judge_kind(kind: str, key: str = "judge.kind") -> JudgeKind:
    """The table's entry; an unknown kind is an error naming the known ones."""
    if kind not in JUDGES:
        raise ValueError(f"{key}: {kind!r} is not a judge kind; known: {', '.join(JUDGES)}")
    return JUDGES[kind]


def build_judge(cfg, progress: bool = False):
    """The judge the section's kind names."""
    return judge_kind(cfg.kind).build(cfg, progress)


def identity_of(cfg) -> dict:
    """What a judge section's judge will record as its identity's identifying part."""
    return {"kind": cfg.kind, **judge_kind(cfg.kind).who(cfg)}


def judge_key(identity: dict) -> tuple:
    """An identity's identifying fields, for collecting distinct judges."""
    return (identity.get("kind"), *(identity.get(k) for k in WHO))


def same_judge(a: dict, b: dict) -> bool:
    """Are two identities (recorded `judge.by`, or identity_of a config section) the same judge?"""
    return (a.get("kind") == b.get("kind") and a.get("model") == b.get("model")
            and all(a[k] == b[k] for k in WHO if k in a and k in b))
