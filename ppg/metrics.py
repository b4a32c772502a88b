"""Every metric the evaluation can produce: its dotted path into metrics.json, whether higher or
lower is better, and which eval settings produce it. The best-on-validation choice, the
promotion gate's thresholds and differences, and the config checks all read this one table.
"""

import math

HIGHER, LOWER = 1, -1

# path -> (direction, what produces it: an eval.mode family, or a switch inside online mode)
METRICS = {
    "online.reward": (HIGHER, "online"),  # the judge's reward: consistent AND answering
    "online.consistency": (HIGHER, "online"),  # prompt-to-line and line-to-line both hold
    "online.persona": (HIGHER, "online"),  # prompt-to-line
    "online.commitment": (HIGHER, "online"),  # line-to-line
    "online.engagement": (HIGHER, "online"),  # replies' length against eval.engagement_words (evasion is short)
    "online.coverage": (HIGHER, "sim"),  # asked facts the reply states (the simulator knows what it asked)
    "online.qa": (HIGHER, "qa"),  # backstory Q&A after the dialogue (eval.qa)
    "online.llm.consistency": (HIGHER, "llm"),  # the LLM judge's verdicts (eval.llm_judge)
    "online.llm.unknown_share": (LOWER, "llm"),  # turns the LLM judge left without a verdict
    "offline.auc": (HIGHER, "offline"),  # likelihood-ratio AUC on logged verdicts
    "offline.weighted_nll": (LOWER, "offline"),  # held-out offline PPG objective
}


def direction(name: str) -> int:
    """+1 when higher is better, -1 when lower is; an unknown metric is an error."""
    if name not in METRICS:
        raise ValueError(f"{name!r} is not a metric the evaluation produces; known: {sorted(METRICS)}")
    return METRICS[name][0]


def produced(eval_cfg) -> list[str]:
    """The metrics an evaluation with these settings (ppg.config.EvalConfig) writes."""
    online = eval_cfg.mode in ("online", "both")
    sim = online and eval_cfg.partner == "simulator"
    have = {"online": online, "sim": sim, "qa": online and eval_cfg.qa, "llm": online and bool(eval_cfg.llm_judge),
            "offline": eval_cfg.mode in ("offline", "both")}
    return [m for m, (_, needs) in METRICS.items() if have[needs]]


def check_produced(name: str, eval_cfg, key: str, removable: bool = False) -> None:
    """Refuse, naming the config key, a metric these eval settings can never produce."""
    if name not in METRICS:
        raise ValueError(f"{key}: {name!r} is not a metric the evaluation produces; known: {sorted(METRICS)}")
    if name not in produced(eval_cfg):
        why = {"online": f"eval.mode is {eval_cfg.mode!r}", "offline": f"eval.mode is {eval_cfg.mode!r}",
               "sim": f"eval.partner is {eval_cfg.partner!r}",
               "qa": "eval.qa is off",
               "llm": "eval.llm_judge is off"}[METRICS[name][1]]
        hint = f"; a --params overlay removes it with `{key}: {{{name}: null}}`" if removable else ""
        raise ValueError(f"{key}: {name} is never measured ({why}), so this can never pass; this "
                         f"evaluation produces {produced(eval_cfg)}{hint}")


def refuse_impossible(p) -> None:
    """Settings across sections that can never pass, refused when params load, before any stage
    runs: a threshold on a metric the evaluation does not produce would train every policy and
    register nothing; bc with a baseline trains nothing; a gate seed equal to the validation seed
    would test on the personas the best policy was picked on. p: ppg.config.Params."""
    check_produced(p.eval.primary, p.eval, "eval.primary")
    from ppg.config_ops import same_judge

    grader = p.eval_judge()
    if p.eval.partner == "llm" and p.eval.mode != "offline":
        if grader.kind == "labels":
            raise ValueError("eval.judge: llm rollouts are new text, and kind labels only keeps logged verdicts; "
                             "set eval.judge (or judge.kind) to llm or reward-model")
        if p.judge.kind != "labels" and same_judge(p.judge, grader):
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
    from ppg.returns import shaping_zeroes_bc

    if "bc" in p.returns.policies and shaping_zeroes_bc(p.returns.baseline, p.returns.standardize):
        raise ValueError(f"returns.policies: bc (weight 1 on every turn) with returns.baseline "
                         f"{p.returns.baseline!r} / standardize {p.returns.standardize} makes every "
                         f"weight 0: it would train nothing (train bc with baseline none, standardize false)")


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
