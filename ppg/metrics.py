"""Every metric the evaluation can produce, in one table: its dotted path into metrics.json,
whether higher or lower is better, which eval settings produce it, how it is computed (an online
metric per dialogue from its judged turns; an offline one as the statistic the gate recomputes on
resampled held-out turns) and whether the evaluation table shows it. The best-on-validation
choice, the promotion gate's thresholds and differences, the table and the config checks all
read it. A new metric is one entry (and, for a family that does not exist yet, its producer);
an unknown metric is refused everywhere, never computed as another.
"""

import math
from dataclasses import dataclass
from typing import Callable

HIGHER, LOWER = 1, -1


def _rate(key: str) -> Callable:
    def per_dialogue(lines, settings: dict):
        from ppg.judges.base import verdict_rates

        return verdict_rates(lines)[key]
    return per_dialogue


def engagement(lines, words: int) -> float | None:
    """How fully a speaker takes part: the mean over its replies of min(1, words in the reply /
    `words`). A consistency-only reward favours bland or evasive replies ("I'd rather not say"),
    which are short; a reply of `words` words or more counts fully. A floor the gate holds, not a
    quality score: a long reply that contradicts the persona still counts as engaged."""
    if not lines:
        return None
    return sum(min(1.0, len(ln.text.split()) / words) for ln in lines) / len(lines)


def _engagement(lines, settings: dict):
    return engagement(lines, settings.get("engagement_words", 12))


def invented(lines, settings: dict | None = None) -> float | None:
    """The decision the K demo is about: of the asks of a fact the backstory leaves open (only the
    simulator's judge marks them), the share the reply answers with a value - a guess that the
    partner's later probes of that fact can expose - against a dodge that earns less now. None
    when the dialogue has no such ask."""
    asks = [j for j in (ln.judge or {} for ln in lines) if j.get("open") and not j.get("probe")]
    return sum(bool(j.get("answered")) for j in asks) / len(asks) if asks else None


def _auc(turns: list[dict]) -> float:
    from ppg.stats import auc

    known = [t for t in turns if t["reward"] == t["reward"]]
    return auc([t["score"] for t in known], [t["reward"] >= 0.5 for t in known])


def _mean_nll_term(turns: list[dict]) -> float:
    w = [t["nll_term"] for t in turns if t["nll_term"] == t["nll_term"]]
    return sum(w) / len(w) if w else float("nan")


@dataclass(frozen=True)
class Metric:
    direction: int  # HIGHER or LOWER is better
    family: str  # what produces it (FAMILIES): online | sim | qa | llm | offline
    per_dialogue: Callable | None = None  # online: (a dialogue's judged turns, settings) -> value or None
    offline_stat: Callable | None = None  # offline: held-out turns (evaluate.offline.offline_turns) -> value
    column: bool = True  # a column of the evaluation's table


METRICS = {
    "online.reward": Metric(HIGHER, "online", _rate("reward")),  # the judge's reward: consistent AND answering
    "online.consistency": Metric(HIGHER, "online", _rate("consistency")),  # prompt-to-line and line-to-line hold
    "online.persona": Metric(HIGHER, "online", _rate("persona")),  # prompt-to-line
    "online.commitment": Metric(HIGHER, "online", _rate("commitment")),  # line-to-line
    "online.engagement": Metric(HIGHER, "online", _engagement),  # reply length against eval.engagement_words
    "online.coverage": Metric(HIGHER, "sim", _rate("coverage")),  # asked facts the reply states (sim knows)
    "online.invented": Metric(LOWER, "sim", invented),  # open facts' asks answered with a guess (a decision rate)
    "online.qa": Metric(HIGHER, "qa"),  # backstory Q&A after the dialogue (eval.qa)
    "online.llm.consistency": Metric(HIGHER, "llm", column=False),  # the LLM judge's verdicts (eval.llm_judge)
    "online.llm.unknown_share": Metric(LOWER, "llm", column=False),  # turns the LLM judge left without a verdict
    "offline.auc": Metric(HIGHER, "offline", offline_stat=_auc),  # likelihood-ratio AUC on logged verdicts
    "offline.weighted_nll": Metric(LOWER, "offline", offline_stat=_mean_nll_term),  # held-out PPG objective
}

# family -> (is it produced under these eval settings, why not)
FAMILIES = {
    "online": (lambda e: e.mode in ("online", "both"), lambda e: f"eval.mode is {e.mode!r}"),
    "sim": (lambda e: e.mode in ("online", "both") and e.partner == "simulator",
            lambda e: f"eval.partner is {e.partner!r}" if e.mode in ("online", "both") else f"eval.mode is {e.mode!r}"),
    "qa": (lambda e: e.mode in ("online", "both") and e.qa, lambda e: "eval.qa is off"),
    "llm": (lambda e: e.mode in ("online", "both") and bool(e.llm_judge), lambda e: "eval.llm_judge is off"),
    "offline": (lambda e: e.mode in ("offline", "both"), lambda e: f"eval.mode is {e.mode!r}"),
}


def metric_spec(name: str, key: str = "metric") -> Metric:
    """The table's entry; an unknown metric is an error naming the known ones."""
    if name not in METRICS:
        raise ValueError(f"{key}: {name!r} is not a metric the evaluation produces; known: {sorted(METRICS)}")
    return METRICS[name]


def direction(name: str) -> int:
    """+1 when higher is better, -1 when lower is; an unknown metric is an error."""
    return metric_spec(name).direction


def produced(eval_cfg) -> list[str]:
    """The metrics an evaluation with these settings (ppg.config.EvalConfig) writes."""
    return [name for name, m in METRICS.items() if FAMILIES[m.family][0](eval_cfg)]


def check_produced(name: str, eval_cfg, key: str, removable: bool = False) -> None:
    """Refuse, naming the config key, a metric these eval settings can never produce."""
    m = metric_spec(name, key)
    if name not in produced(eval_cfg):
        why = FAMILIES[m.family][1](eval_cfg)
        hint = f"; a --params overlay removes it with `{key}: {{{name}: null}}`" if removable else ""
        raise ValueError(f"{key}: {name} is never measured ({why}), so this can never pass; this "
                         f"evaluation produces {produced(eval_cfg)}{hint}")


def refuse_impossible(p) -> None:
    """Settings across sections that can never pass, refused when params load, before any stage
    runs: a threshold on a metric the evaluation does not produce would train every policy and
    register nothing; a gate seed equal to the validation seed
    would test on the personas the best policy was picked on. p: ppg.config.Params."""
    check_produced(p.eval.primary, p.eval, "eval.primary")
    from ppg.judges.kinds import identity_of, same_judge

    grader = p.eval_judge()
    if p.eval.partner == "llm" and p.eval.mode != "offline":
        if grader.kind == "labels":
            raise ValueError("eval.judge: llm rollouts are new text, and kind labels only keeps logged verdicts; "
                             "set eval.judge (or judge.kind) to llm or reward-model")
        if p.judge.kind != "labels" and same_judge(identity_of(p.judge), identity_of(grader)):
            raise ValueError(f"eval.judge: the rollouts would be graded by the judge that gives the training rewards "
                             f"(judge.kind {p.judge.kind}); a policy trained against a judge must be graded by "
                             f"another: e.g. eval.judge {{kind: llm, model: <another model>}} or {{kind: reward-model, "
                             f"reward_model: {{path: <a reward model trained on other personas>}}}}")
    if p.online.partner == "llm" and p.judge.kind == "labels":
        raise ValueError("online.partner: llm rollouts are new text, and judge.kind labels only keeps logged "
                         "verdicts; set judge.kind to llm or reward-model")
    for key in ("thresholds", "non_inferiority"):
        for name in getattr(p.registry, key):
            check_produced(name, p.eval, f"registry.{key}", removable=True)
    if p.registry.seed is not None and p.registry.seed == p.eval.seed:
        raise ValueError(f"registry.seed: {p.registry.seed} is eval.seed, the validation personas the "
                         f"best policy is chosen on; the gate must test on others (null draws fresh ones)")


def passes(value: float | None, threshold: float, name: str) -> bool:
    """A threshold is a floor for a higher-is-better metric and a ceiling for a lower-is-better one."""
    if value is None:
        return False
    return value >= threshold if direction(name) == HIGHER else value <= threshold


def metric_entry(metrics: dict | None, path: str):
    """What a dotted path (e.g. online.consistency) names in metrics.json: its {mean, lo, hi, n,
    per_unit} dict, a refusal {refused, reason}, a number, or None when it is absent."""
    x = metrics
    for part in path.split("."):
        if not isinstance(x, dict) or part not in x:
            return None
        x = x[part]
    return x


def metric(metrics: dict, path: str) -> float | None:
    """A dotted path into metrics.json (e.g. online.consistency -> its mean); None if absent,
    refused or not a finite number (a NaN mean of no units is unknown, never a score)."""
    x = metric_entry(metrics, path)
    if isinstance(x, dict):
        x = None if x.get("refused") else x.get("mean")
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def unscored(metrics: dict, path: str) -> str:
    """Why a policy has no score on a metric, in words (e.g. the AUC's refusal with its count)."""
    x = metric_entry(metrics, path)
    if x is None:
        return f"not measured (no {path} in its metrics.json)"
    return (x.get("reason") or "no finite value") if isinstance(x, dict) else f"{path} = {x}"


def best_policy(primary: str, metrics: dict[str, dict], evidence: dict[str, float] | None = None
                ) -> tuple[dict, str | None]:
    """(each policy's score on the primary metric, the best in the metric's better direction, or
    None when no policy has a score): the best-on-validation choice. A tie on the score goes to
    the policy with more evidence (evidence: policy -> the lower bound of its paired improvement
    over the untrained base; higher first), not to whichever is listed first."""
    scores = {pol: metric(m, primary) for pol, m in metrics.items()}
    known = {pol: direction(primary) * s for pol, s in scores.items() if s is not None}
    if not known:
        return scores, None
    bound = {pol: x for pol, x in (evidence or {}).items() if x is not None}
    return scores, max(known, key=lambda pol: (known[pol], bound.get(pol, float("-inf"))))
