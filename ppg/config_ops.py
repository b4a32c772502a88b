"""params.yaml sections of the operations around training: evaluation, the judge, monitoring,
tracking, registry and promotion, the pipeline. (Part of the one config tree of ppg.config; split
out for length; the K study's sections are ppg.config_study.)"""

from dataclasses import asdict, dataclass, field

from ppg.config_rollout import (BACKEND_NAMES, GenerationConfig, PartnerEndpointConfig,  # noqa: F401
                                generation_config)
from ppg.judges.kinds import judge_kind


def one_of(key: str, value, options) -> None:
    """Refuse a value outside its options, naming the key: `key: expected a, b or c, got 'x'`."""
    if value not in options:
        names = [str(o) for o in options]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ValueError(f"{key}: expected {listed}, got {value!r}")


@dataclass
class RewardModelConfig:
    path: str = "models/judge"
    """Where `ppg train-judge` writes the per-turn reward model and where judge.kind reward-model
    reads it (a sequence-classification model folder + judge.json)."""
    base: str = ""
    """The model it starts from ("" = model.spec): its backbone stays frozen, only the score head
    on the last token's state trains, so a step costs a forward pass."""
    max_length: int = 384
    """Tokens per judged line (the earlier lines, persona, the line, the question); a longer text
    loses its oldest history first."""
    history: int = 4
    """Earlier lines of the dialogue shown before the persona and the line."""
    lora_r: int = 0
    """0: the backbone stays frozen and only the score head trains (a forward pass per line).
    r > 0: LoRA adapters of rank r (alpha 2r) on the attention projections train with the head
    (a backward pass per line too), merged into the saved weights."""
    validation: float = 0.2
    """Share of each domain's persona groups held out: the AUC and calibration are measured on
    them only."""
    steps: int = 200
    """Optimizer steps of `ppg train-judge`."""
    lr: float = 1.0e-3
    """Learning rate of the head (AdamW)."""
    batch_size: int = 16
    """Lines per step."""
    seed: int = 0
    """Split, initialisation and batch order."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every N steps (and at the last) under train.workdir/judge/: each
    holds the whole model, so less often than the policy's (train.checkpoint_every)."""


@dataclass
class JudgeConfig:
    kind: str = "labels"
    """Who gives the per-turn rewards of the `judge` stage (`ppg judge`): labels = keep the verdicts
    logged with the data (null stays null); llm = an OpenAI-compatible chat-completions endpoint
    (vLLM, Ollama, TGI, OpenAI, `ppg serve-judge`) judges the turns whose reward is null;
    reward-model = the per-turn reward model of `ppg train-judge` (judge.reward_model) scores
    them in process (reward = its P(consistent))."""
    overwrite: bool = False
    """Judge every evaluated turn again, logged rewards too (llm); off: a logged reward is kept."""
    out: str = "data/judged"
    """The stage's output folder (dialogues.jsonl, summary.json): what validate and build read."""
    cache: str = ".ppg-work/judge/verdicts.sqlite"
    """The verdict cache (outside DVC, kept across runs): answers keyed by judge model, answer budget
    and the exact prompt, so a rerun asks nothing again and a failed run resumes."""
    redact: dict = field(default_factory=lambda: {
        "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
        "phone": r"(?<![\w.])\+?\d(?:[ ()-]{0,2}\d){7,14}(?![\w.]\w)"})
    """Personal data replaced by `[name]` before judging and before anything becomes training data:
    {name: regular expression} over personas, lines and logged judge texts ({} = none)."""
    base_url: str = "http://127.0.0.1:8765/v1"
    """llm: the endpoint's base URL (…/v1)."""
    model: str = "judge"
    """llm: the model name sent with each request (also part of every cache key)."""
    api_key_env: str = "PPG_JUDGE_API_KEY"
    """llm: the environment variable that holds the API key (never written anywhere)."""
    timeout_s: float = 60.0
    """llm: the whole of one attempt in seconds (connecting, sending, and the answer's last byte:
    a server that trickles its answer is cut off here)."""
    retries: int = 3
    """llm: retries of a request that timed out, got HTTP 429/5xx or an answer that is not a chat
    completion (exponential backoff); then the stage fails and writes nothing. A redirect or
    another 4xx fails it at once (the key is never sent anywhere but base_url)."""
    backoff_s: float = 0.5
    """llm: the first retry's wait; each next one doubles it."""
    retry_after_max_s: float = 60.0
    """llm: the longest wait a 429's Retry-After header is honoured for (longer asks wait this)."""
    concurrency: int = 4
    """llm: requests in flight at once."""
    max_tokens: int = 96
    """llm: the answer budget (reasoning sentence + verdict)."""
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    """The per-turn reward model: how `ppg train-judge` trains it, where it lives."""
    require: str = "both"
    """Which verdicts must hold for reward 1: both, persona (prompt-to-line) or commitment
    (line-to-line). One known failure gives 0; otherwise an unknown verdict gives a null reward."""

    def __post_init__(self):
        import re

        judge_kind(self.kind)  # the judges table (ppg.judges.kinds) names every kind
        one_of("judge.require", self.require, ("both", "persona", "commitment"))
        if not isinstance(self.redact, dict):
            raise ValueError(f"judge.redact: expected {{name: regular expression}}, got {self.redact!r}")
        for name, rx in self.redact.items():
            try:
                re.compile(rx)
            except (re.error, TypeError) as e:
                raise ValueError(f"judge.redact.{name}: not a regular expression ({e})") from None
        if self.retries < 0 or self.concurrency < 1 or self.max_tokens < 1:
            raise ValueError("judge: retries must be >= 0, concurrency and max_tokens >= 1")
        if not (self.timeout_s > 0 and self.backoff_s >= 0 and self.retry_after_max_s >= 0):
            raise ValueError("judge: timeout_s must be > 0, backoff_s and retry_after_max_s >= 0")


def judge_with(base: JudgeConfig, overrides: dict, key: str) -> JudgeConfig:
    """The judge section with some keys replaced (reward_model's keys one by one); errors name key."""
    if not isinstance(overrides, dict):
        raise ValueError(f"{key}: expected a mapping of judge keys, got {overrides!r}")
    data = asdict(base)
    unknown = sorted(set(overrides) - set(data))
    if unknown:
        raise ValueError(f"{key}: unknown key(s) {unknown}; known: {sorted(data)}")
    for k, v in overrides.items():
        data[k] = {**data[k], **v} if k == "reward_model" and isinstance(v, dict) else v
    try:
        return JudgeConfig(**{**data, "reward_model": RewardModelConfig(**data["reward_model"])})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{key}: {str(e).removeprefix('judge.')}") from None


@dataclass
class EvalConfig:
    out: str = "eval"
    """Results go to OUT/<policy>/: metrics.json, table.md, drift.png (and the judged dialogues)."""
    mode: str = "online"
    """online (simulator personas, exact judge), offline (logged verdicts: AUC, weighted NLL) or both."""
    domain: str | None = None
    """Online evaluation's domain: the simulator setting (default: sim.domain); with the llm
    partner, only personas of this domain (null = every domain of the split or persona file)."""
    partner: str = "simulator"
    """Who plays the other side online: simulator (closed-vocabulary personas, exact judge) or llm
    (personas of the held-out split of judge.out against partner_model, judged by judge.kind)."""
    partner_model: str = ""
    """llm partner in this process: a model spec (tiny, smollm2-135m, a folder; "" = model.spec)."""
    partner_endpoint: PartnerEndpointConfig = field(default_factory=PartnerEndpointConfig)
    """llm partner behind an endpoint (its base_url set; then partner_model must stay ""): the
    fields above. Online PPG's llm partner is this one too."""
    personas: int = 8
    """Held-out personas (one dialogue each) for online evaluation."""
    personas_file: str = ""
    """llm partner: a persona list (`ppg import-personas` writes one from the Consistent-LLMs
    persona pools) to draw from instead of the split's personas; a persona of the train split is
    refused. "" = the validation / test split's personas of judge.out."""
    turns: int = 0
    """Persona turns per dialogue (0 = sim.turns)."""
    seed: int = 1000
    """Seed of the held-out personas: training data generated with sim.seed never meets them
    (rollout scenes are keyed by seed, domain and index)."""
    qa: bool = True
    """Q&A consistency after each dialogue: simulator = ask every fact the backstory states (the
    answer must state it); llm partner = the partner asks its domain's questions about the
    backstory (ppg.partner.QUESTIONS or qa_questions) and the grading judge checks each answer
    against the backstory."""
    qa_questions: str = ""
    """llm partner: a JSON file {domain: [question, ...]} replacing the project's questions of
    the domains it names ("" = the project's)."""
    generation: dict = field(default_factory=lambda: {"max_new_tokens": 24, "temperature": 0.7, "top_p": 0.9,
                                                      "batch_size": 32})
    """Sampling for rollouts: the fields of GenerationConfig above (max_new_tokens,
    temperature, top_p, batch_size, backend: cache, the default, keeps each dialogue's KV cache
    across turns; generate re-encodes the dialogue every turn)."""
    dtype: str = "auto"
    """The weights rollouts and Q&A sample with: float32, bfloat16, or auto (bfloat16 where it is
    native: a GPU that supports it, or a CPU with amx_bf16 / avx512_bf16, where it prefills ~3x and
    decodes ~1.6x faster than float32; else float32). Offline scoring (AUC, weighted NLL) stays
    float32. metrics.json records it (online.dtype); benchmarks/eval_speed.py measures how often
    greedy tokens agree with float32."""
    split: str = "validation"
    """validation (the evaluate stage; the best policy is chosen on it) or test (the promotion gate).
    Offline: the Parquet split of that name (with --fold F: fold F of train.split). Online: the
    held-out personas of seed (validation) or seed + 1 (test)."""
    engagement_words: int = 12
    """online.engagement: a reply of this many words or more counts as fully engaged, a shorter one
    in proportion (the gate's non-inferiority floor against bland, evasive replies; two sentences
    of a brief reply are ~12-20 words)."""
    min_contradictions: int = 10
    """Fewer contradicting turns than this: AUC is reported as refused, not scored."""
    judge: dict = field(default_factory=dict)
    """Who grades the rollouts of online evaluation and the gate with the llm partner: the judge
    section with these keys replaced, e.g. {kind: llm, model: grader} or {kind: reward-model,
    reward_model: {path: models/judge-eval}} ({} = the judge section itself). A policy trained
    against a judge is graded by another: the judge that gave the training rewards is refused
    (ppg.judges.independent), and metrics.json names the grader (online.judge)."""
    llm_judge: bool = False
    """Also judge the online rollouts with the LLM endpoint of the judge section (judge.base_url,
    judge.model, judge.api_key_env, ...; whatever judge.kind is): online.llm holds its
    prompt-to-line + line-to-line consistency and the share of turns it left without a verdict.
    An endpoint that stays down fails the evaluation (nothing written, nothing logged)."""
    primary: str = "online.reward"
    """The metric that picks the best policy (validation) and that the gate compares (test): a dotted
    path into metrics.json, e.g. online.reward (the judge's reward: consistent AND answering, so
    dodging every question cannot win), online.consistency, offline.auc."""

    def __post_init__(self):
        one_of("eval.partner", self.partner, ("simulator", "llm"))
        if self.partner_endpoint.base_url and self.partner_model:
            raise ValueError("eval.partner_model and eval.partner_endpoint.base_url: the llm partner is one or "
                             "the other; set one")
        one_of("eval.mode", self.mode, ("online", "offline", "both"))
        one_of("eval.dtype", self.dtype, ("auto", "float32", "bfloat16"))
        if self.personas < 1:
            raise ValueError(f"eval.personas: must be >= 1, got {self.personas}")
        if not isinstance(self.llm_judge, bool):
            raise ValueError(f"eval.llm_judge: expected true or false (the endpoint is configured in the "
                             f"judge section), got {self.llm_judge!r}")
        one_of("eval.split", self.split, ("validation", "test"))
        if not isinstance(self.engagement_words, int) or self.engagement_words < 1:
            raise ValueError(f"eval.engagement_words: expected a whole number >= 1, got {self.engagement_words!r}")
        generation_config("eval.generation", self.generation)

    def persona_seed(self, split: str) -> int:
        return self.seed + (split == "test")


@dataclass
class MonitorConfig:
    format: str = "jsonl"
    """The importer format of the champion's logs (`ppg monitor --logs DIR`); every dialogue names
    its model in meta.model_version as NAME/VERSION."""
    metric: str = "reward"
    """What is watched per dialogue: reward (any judge has it) or consistency (judges with
    prompt-to-line and line-to-line verdicts)."""
    min_consistency: float = 0.5
    """The rule fires when the interval's UPPER bound of the metric is below this."""
    max_drop: float = 0.1
    """... or when the upper bound is more than this below the version's baseline mean (its first
    monitored batch under the same judge)."""
    min_turns: int = 40
    """Judged turns a version needs in a check before the rule decides."""
    incoming: str = "data/incoming"
    """Where drifted, judged logs go to become training data: data.source must read it."""
    state: str = ".ppg-work/monitor"
    """Seen-file hashes, baselines and the kept judged batches."""
    keep_batches: int = 10
    """Retention: the newest judged batches kept under state/batches (older ones are deleted)."""
    schedule: str = "0 * * * *"
    """Cron of the ppg-monitor deployment (`ppg monitor --serve`)."""

    def __post_init__(self):
        one_of("monitor.metric", self.metric, ("reward", "consistency"))
        if self.keep_batches < 0 or self.min_turns < 1:
            raise ValueError("monitor: keep_batches must be >= 0 and min_turns >= 1")


@dataclass
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow/mlflow.db"
    """Where runs go (MLFLOW_TRACKING_URI overrides it): the embedded SQLite store by default,
    or e.g. http://host:5000 for an `mlflow server`."""
    artifacts: str = "mlflow/artifacts"
    """Artifact folder of a new experiment in the embedded store."""
    experiment: str = "ppg"
    """Experiment name."""
    ui_url: str = "http://127.0.0.1:5000"
    """Where the MLflow UI of the embedded store answers (`mlflow ui --backend-store-uri
    sqlite:///mlflow/mlflow.db`): the links of the pipeline's comparison table. When the runs go
    to a tracking server (an http(s):// tracking URI) the links point at that server instead."""


@dataclass
class RegistryConfig:
    model: str = "ppg-{domain}"
    """Registered model name; {domain} = the evaluated simulator domain (online) or the data's
    first domain (offline only)."""
    margin: float = 0.0
    """The challenger becomes champion only if the LOWER bound of the paired interval of its
    improvement on eval.primary (in the metric's better direction) is above this."""
    confidence: float = 0.95
    """Two-sided confidence of the gate's paired intervals (the promotion test is one-sided at
    (1 - confidence) / 2)."""
    method: str = "sign_flip"
    """Interval for per-persona metrics (online.*): sign_flip (exact permutation test of the
    paired differences, inverted into an interval; no normality assumed) or paired_t. Offline
    metrics (AUC, weighted NLL) always use a cluster bootstrap over persona groups."""
    min_pairs: int = 8
    """Fewest pairs (test personas; persona groups offline) the gate decides on; fewer: not
    promoted. (A 95% sign-flip bound needs at least 6.)"""
    boots: int = 2000
    """Cluster-bootstrap replicates for offline metrics."""
    personas: int = 0
    """Test personas per gate (0 = eval.personas); both models play the same ones."""
    seed: int | None = None
    """Seed of the gate's test personas: null draws fresh ones at every gate (recorded in
    gate.json), so scheduled runs do not wear out one held-out set; an int fixes them."""
    require_better_than_base: bool = True
    """Register a challenger only when the best policy's paired interval against the untrained
    base on eval.primary (validation split) lies above 0; false registers the best policy anyway
    and leaves the decision to the gate. (docs/pipeline.md argues the default.) Offline primary
    metrics compare with the base by construction: there it does not apply."""
    thresholds: dict = field(default_factory=lambda: {"online.reward": 0.3, "online.consistency": 0.5})
    """Absolute bounds (dotted metric path -> value) the challenger must meet, champion or not: a
    floor for higher-is-better metrics, a ceiling for lower-is-better ones (ppg.metrics)."""
    non_inferiority: dict = field(default_factory=lambda: {"online.coverage": 0.1, "online.engagement": 0.1})
    """Secondary metrics that must not get worse (metric -> allowed loss, e.g. {online.coverage:
    0.05}): the paired lower bound of the challenger's improvement may not fall below -loss."""

    def __post_init__(self):
        for name in ("thresholds", "non_inferiority"):
            d = getattr(self, name)
            if not isinstance(d, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                  for v in d.values()):
                raise ValueError(f"registry.{name}: expected a mapping metric -> number, got {d!r}")
        if any(v < 0 for v in self.non_inferiority.values()):
            raise ValueError(f"registry.non_inferiority: allowed losses must be >= 0, got {self.non_inferiority}")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"registry.confidence: expected a level in [0.5, 1), got {self.confidence}")
        one_of("registry.method", self.method, ("sign_flip", "paired_t"))
        if self.min_pairs < 2 or self.boots < 100 or self.personas < 0:
            raise ValueError("registry.min_pairs must be >= 2, registry.boots >= 100, registry.personas >= 0")


@dataclass
class PipelineConfig:
    lock_timeout: float = 1800
    """Seconds a pipeline run waits for another run on the same workspace before it fails."""
    schedule: str = "0 3 * * *"
    """Cron schedule of the retraining deployment (`ppg deploy`, `ppg serve`)."""
    deployment: str = "scheduled-{workspace}"
    """Name of this workspace's deployments of ppg-pipeline and ppg-monitor. `{workspace}` becomes
    <host>-<folder>-<hash of its path>, so clones that deploy to one Prefect server (several
    machines, or several checkouts on one) never overwrite each other's deployment."""
    pool: str = "ppg"
    """The Prefect work pool `ppg deploy` puts the deployments on (deploy/services.sh creates it)."""
    heartbeat: int = 60
    """Seconds between a deployed flow run's heartbeats (Prefect's minimum: 30). A run silent for
    three of them is marked Crashed by the automation `ppg deploy` creates on the server: its
    process died with its worker or machine, and nothing else would ever end it."""
    commit: bool = True
    """After a run that ran stages, commit dvc.lock and params.yaml (only those) in the
    workspace's git with a message naming the parent MLflow run and the outcome, and tag a
    registered version's commit `ppg/<model>/v<version>` (docs/pipeline.md, Lineage). The MLflow
    record is complete without it; a workspace with no commit yet is left alone."""
    register: bool = True
    """false: the run compares the policies and stops there, registering and gating nothing (the
    K demo, params.kdemo.yaml: a demonstration is never a candidate for the user's registry)."""
    plot: list = field(default_factory=list)
    """Metrics plotted per policy and control with their 95% intervals (policies.png in eval.out
    and in the pipeline's MLflow run); [] = eval.primary alone."""
    warm: bool = True
    """Run the evaluation stages warm (ppg.warm): one process imports torch, transformers,
    peft and MLflow once and forks each `ppg evaluate` DVC runs, instead of five processes
    importing them (~5 s each). The outputs are the same; false runs every stage cold."""

    def __post_init__(self):
        from ppg.metrics import metric_spec

        for name in self.plot:
            metric_spec(name, "pipeline.plot")
        if self.heartbeat < 30:
            raise ValueError(f"pipeline.heartbeat: {self.heartbeat} s is below Prefect's minimum of 30 s")

    def deployment_name(self, workspace=".") -> str:
        import hashlib
        import re
        import socket
        from pathlib import Path

        root = Path(workspace).resolve()
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{socket.gethostname()}-{root.name}")
        return self.deployment.replace("{workspace}", f"{slug}-{hashlib.sha256(str(root).encode()).hexdigest()[:6]}")
