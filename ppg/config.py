"""params.yaml: the one config tree read by the CLI, DVC stages (`params:` in dvc.yaml) and flows.

Each section is a dataclass; the docstring under each field is its documentation. Unknown keys
are errors (a typo must not silently fall back to a default).
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ppg.config_check import check_fields, read_yaml, short
from ppg.config_ops import (EvalConfig, JudgeConfig, MlflowConfig, MonitorConfig, PipelineConfig,  # noqa: F401
                            RegistryConfig, generation_config, one_of)
from ppg.config_study import StudyConfig  # noqa: F401
from ppg.returns import BASELINES, parse_policy_id


@dataclass
class ReturnsConfig:
    policies: list[str] = field(default_factory=lambda: ["greedy", "k3", "full", "bc"])
    """Policy ids to train and evaluate: greedy, k<K> (K-step lookahead), full, segment, bc.
    bc (behaviour cloning: weight 1 on every turn, plain fine-tuning on the same turns) is the
    reward-free control: the pipeline compares every policy with it and never registers it;
    it always trains unshaped (returns.baseline and standardize would zero its weights)."""
    gamma: float = 1.0
    """Discount inside the credited subset, in (0, 1]; 1.0 = the paper's undiscounted sums."""
    segments: dict = field(default_factory=lambda: {"length": 3})
    """Segment policy's partition of each speaker's turns: {length: L} (fixed-length segments)
    or {from: meta.segment_starts} (per-dialogue starts, e.g. the simulator's probe windows)."""
    baseline: str = "none"
    """none | batch_mean | turn_mean | group_loo (groups = dialogues sharing a persona) |
    turn_kind (the other dialogues' turns of the same lines[].meta.kind at the same index; data
    without kinds: leave-one-out turn_mean). ppg.returns.baseline says what each one optimizes."""
    standardize: bool = False
    """Divide the (baselined) weights by their std; with baseline none, also centre them."""
    clip: list | None = None
    """[low, high] bounds on the shaped weights (null for none; either end may be null). A low
    bound such as -1 keeps signed weights from pushing bad turns' likelihood down without limit."""

    def __post_init__(self):
        for p in self.policies:
            parse_policy_id(p)
        if self.baseline not in BASELINES:
            raise ValueError(f"returns.baseline: {self.baseline!r} is not one of {BASELINES}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"returns.gamma: must be in (0, 1], got {self.gamma}")
        if self.clip is not None and not (isinstance(self.clip, (list, tuple)) and len(self.clip) == 2 and (
                None in self.clip or self.clip[0] <= self.clip[1])):
            raise ValueError(f"returns.clip: expected [low, high] (either may be null) or null, got {self.clip}")
        ok = (self.segments == {"from": "meta.segment_starts"} or (
            set(self.segments) == {"length"} and isinstance(self.segments["length"], int)
            and not isinstance(self.segments["length"], bool) and self.segments["length"] >= 1))
        if not ok:
            raise ValueError(f"returns.segments: expected {{length: L >= 1}} or "
                             f"{{from: meta.segment_starts}}, got {self.segments}")


@dataclass
class DataConfig:
    source: str = "simulator"
    """What `ppg import --source` reads: FORMAT:PATH[,PATH...] (FORMAT: a name of
    ppg.data.importers.IMPORTERS, `ppg import --help` lists them; `chitchat:-` = the packaged
    corpus; a folder means its files of the format's suffixes, e.g. the drop folder
    data/incoming), or `simulator` (generated with the sim section). The `sources` stage hashes
    every file it reads and `import` depends on that manifest, so a new or edited file re-runs
    import -> ... -> gate at the next pipeline run."""
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
    max_duplicate_share: dict = field(default_factory=lambda: {"*": 0.05, "simulator": 0.6})
    """Largest share of lines that repeat an earlier line of the same speaker in the dialogue,
    keyed by source ("*" = any other): generator loops in logged data; the simulator's templated
    small talk and probe answers repeat by design."""
    label_balance: dict = field(default_factory=lambda: {
        "consistent-llms/chatting": [0.0, 0.15], "consistent-llms/education": [0.05, 0.5],
        "consistent-llms/therapy": [0.35, 0.85]})
    """Bounds on the contradiction share (reward < 0.5) among judged turns, keyed SOURCE/DOMAIN
    (or SOURCE/* for every domain of a source); real therapy is ~62% contradictions, chatting ~3%.
    Groups with no entry are unbounded."""

    def __post_init__(self):
        if not isinstance(self.max_duplicate_share, dict) or any(
                not isinstance(b, (int, float)) or not 0 <= b <= 1 for b in self.max_duplicate_share.values()):
            raise ValueError(f"validate.max_duplicate_share: expected {{source or '*': share in [0, 1]}}, "
                             f"got {self.max_duplicate_share}")
        for key, b in self.label_balance.items():
            if not (isinstance(b, (list, tuple)) and len(b) == 2 and 0 <= b[0] <= b[1] <= 1):
                raise ValueError(f"validate.label_balance[{key!r}]: expected [low, high] in [0, 1], got {b}")


@dataclass
class ModelConfig:
    spec: str = "smollm2-135m"
    """smollm2-135m (real, offline from PyPI) | tiny (tests) | sim-base (the tiny model taught the
    simulator's language: the K study's base, built once, ppg.study.demo) | a local folder | ORG/NAME on a hub."""
    base: str = "models/base"
    """Folder written by `ppg prepare-model` (a DVC output). When set, every stage loads the base
    model from it; empty = resolve spec into the local cache (what the tests of a tiny model do)."""


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


def _default_deepspeed():
    # CPU preset: fp32 (bf16 is emulated on CPUs without AVX-512/AMX: 2-10x slower), ZeRO-0,
    # torch's AdamW inside DeepSpeed (`torch_adam`: no C++ JIT build). A GPU preset changes only
    # this section: {"bf16": {"enabled": true}, "zero_optimization": {"stage": 2}} (docs/training.md).
    return {
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 0},
        "bf16": {"enabled": False},
        "optimizer": {"type": "AdamW", "params": {"lr": 2e-4, "betas": [0.9, 0.999], "eps": 1e-8,
                                                   "weight_decay": 0.0, "torch_adam": True}},
        # linear warm-up from 10% over 2 steps, then linear decay to 0 at the last step ("auto")
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": 2e-5, "warmup_max_lr": 2e-4, "warmup_num_steps": 2, "warmup_type": "linear",
            "total_num_steps": "auto"}},
        "steps_per_print": 1000000000,
    }


@dataclass
class LoraConfig:
    enabled: bool = True
    """Train LoRA adapters (peft) instead of every weight."""
    r: int = 8
    """Adapter rank."""
    alpha: int = 16
    """Adapter scale numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters (Llama/SmolLM2 attention projections)."""


@dataclass
class TrainConfig:
    data: str = "data/built"
    """Built dataset folder (ppg build output)."""
    split: str = "train"
    """Split to train on."""
    out: str = "models"
    """Final adapters/weights go to OUT/<policy id>/ (a DVC output) with run.json."""
    workdir: str = ".ppg-work/train"
    """In-progress checkpoints: WORKDIR/<policy id>[-fold<F>]/. Not a DVC output: `dvc repro`
    deletes a stage's outputs before rerunning it, which would defeat resume."""
    batch_size: int = 2
    """Sequences per micro-batch (per rank)."""
    bucket_batches: int = 50
    """Length buckets: pools of bucket_batches * batch_size sequences are sorted by length and cut
    into batches, so padding stays small; batch order is then shuffled."""
    max_steps: int = 4
    """Optimizer steps; 0 = run `epochs` full passes."""
    epochs: int = 1
    """Passes over the data when max_steps is 0."""
    subsample: int = 0
    """Train on a seeded subsample of this many sequences (0 = all)."""
    reduction: str = "sum"
    """log pi(a_t | x_t) of a turn: sum (the paper's) or mean of its token log-probs."""
    seed: int = 0
    """Seeds model init (tiny), data order and dropout."""
    checkpoint_every: int = 2
    """Save a resumable checkpoint every N optimizer steps (and at the end)."""
    keep_checkpoints: int = 2
    """Keep the last M complete checkpoints."""
    gradient_checkpointing: bool = False
    """Activation checkpointing: each layer keeps only its input for the backward pass and
    recomputes the rest, for about one more forward pass per step; for long sequences on a GPU
    whose memory the activations fill. (The loss never builds the [B, L, V] logits either way:
    the head runs only where a target token is predicted, ppg.losses.target_logprobs.)"""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (peft)."""
    launcher: str = ""
    """The command that starts the train stage's ranks, put before `$(command -v ppg) train` in
    dvc.yaml: "" = one process; `deepspeed --num_gpus 8` = every GPU of this node; `deepspeed
    --hostfile hosts --num_nodes 2` = two nodes (add `--master_port P` when two workspaces train
    at once on one machine); `deepspeed --num_gpus 2` with DS_ACCELERATOR=cpu = two CPU ranks.
    The data is sharded by batch, so N ranks with batch_size B step like one rank with N
    accumulation steps. Offline training only: online PPG refuses more than one rank."""
    deepspeed: dict = field(default_factory=_default_deepspeed)
    """The DeepSpeed config (ZeRO stage, bf16, accumulation, clipping, optimizer, LR schedule);
    train_micro_batch_size_per_gpu and train_batch_size are filled in from batch_size."""

    def __post_init__(self):
        one_of("train.reduction", self.reduction, ("sum", "mean"))
        for name in ("batch_size", "bucket_batches", "checkpoint_every", "keep_checkpoints", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 0 or self.subsample < 0:
            raise ValueError("train.max_steps and train.subsample must be >= 0")


def _sim_domains():
    # Named settings of the dependency distance d (turns between an ask and its probe) and of
    # how much the backstory states; the K study sweeps d itself.
    return {"chatting": {"distance": [1, 2], "known": 5},
            "therapy": {"distance": [2, 3], "known": 4},
            "education": {"distance": [5, "end"], "known": 3}}


@dataclass
class SimConfig:
    domain: str = "therapy"
    """Setting used by `ppg import --source simulator` (a key of domains)."""
    dialogues: int = 200
    """Dialogues `ppg import --source simulator` generates."""
    turns: int = 8
    """Turns of the persona speaker per dialogue."""
    seed: int = 0
    """Same seed, same bytes."""
    domains: dict = field(default_factory=_sim_domains)
    """Named settings: distance (a list to draw d from; "end" = probe at the last free turn),
    known (how many of the 8 attributes the backstory states; the rest are open) and probes
    (optional, default 1: how many turns in a row, from d after the ask, probe each fact; an
    exposed invention loses every one of them, so more probes make exposure cost more)."""
    behaviour: dict = field(default_factory=lambda: {"consistent": 0.75, "contradict": 0.1, "evasive": 0.05,
                                                     "tempt": 0.5, "keep": 0.8})
    """The logged behaviour policy: at an ask of a stated fact, consistent / contradict (else
    evasive); at an ask of an open fact, tempt = invent a value (else evasive); at a probe,
    evasive first, then keep = repeat an earlier statement, else the story (contradict: a wrong value)."""
    evasive_reward: float = 0.5
    """Reward of a reply that dodges an ask (below 1, so saying nothing cannot win)."""
    require: str = "both"
    """Which verdicts must hold for reward 1: both, persona (prompt-to-line) or commitment (line-to-line)."""

    def __post_init__(self):
        for name, s in self.domains.items():
            ds = s.get("distance") if isinstance(s, dict) else None
            probes = s.get("probes", 1) if isinstance(s, dict) else None
            if not ds or any(not (d == "end" or (isinstance(d, int) and d >= 1)) for d in ds) \
                    or not 1 <= s.get("known", -1) <= 8 or set(s) - {"distance", "known", "probes"} \
                    or isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
                raise ValueError(f"sim.domains.{name}: expected {{distance: [d >= 1 or end, ...], known: 1..8, "
                                 f"probes: >= 1 (optional)}}, got {s}")
        b = self.behaviour
        if set(b) != {"consistent", "contradict", "evasive", "tempt", "keep"} \
                or any(not 0 <= x <= 1 for x in b.values()) or b["consistent"] + b["contradict"] > 1:
            raise ValueError(f"sim.behaviour: expected probabilities consistent, contradict, evasive, tempt, keep "
                             f"(consistent + contradict <= 1), got {b}")


ONLINE_BASELINES = ("group_loo", "turn_mean", "batch_mean", "none")


@dataclass
class OnlineConfig:
    domain: str | None = None
    """Simulator setting the policy plays (default: sim.domain); with the llm partner, only
    training personas of this domain (null = every domain)."""
    partner: str = "simulator"
    """simulator, or llm: personas of the train split of judge.out against eval.partner_model,
    every turn judged by judge.kind (as eval.partner llm, on the training personas)."""
    personas_per_step: int = 4
    """Personas per optimizer step."""
    group: int = 4
    """Rollouts per persona: the baseline of a turn is the mean return of the others (LOO)."""
    turns: int = 0
    """Persona turns per rollout (0 = sim.turns)."""
    steps: int = 20
    """Optimizer steps (each generates personas_per_step * group dialogues)."""
    kl_coef: float = 0.05
    """Weight of KL(pi || pi_ref) to the frozen starting policy."""
    kl_estimator: str = "k2"
    """Per-token KL penalty (ppg.losses.kl_penalty): k2 (d^2/2) or k1 (score-function form), whose
    gradients follow KL(pi || pi_ref) per visited state; k3 (GRPO's) estimates that KL's value well
    but its gradient follows the reverse KL(pi_ref || pi)."""
    init: str = ""
    """Warm start from an offline PPG output folder (e.g. models/k3); empty = the base model."""
    generation: dict = field(default_factory=lambda: {"max_new_tokens": 32, "temperature": 1.0, "top_p": 1.0,
                                                      "batch_size": 16})
    """Rollout sampling, as eval.generation. Online training refuses a temperature or top_p other
    than 1 when it starts: REINFORCE's gradient is only unbiased for replies sampled from the
    policy's own distribution, which it scores (a warped sampler would make it off-policy)."""
    baseline: str = "group_loo"
    """What each turn's partial return is measured against (its own, not returns.baseline, which
    is offline training's): group_loo = the mean return at that turn of the OTHER rollouts of the
    same persona (needs group >= 2); turn_mean / batch_mean = the step's mean at that turn / over
    all turns; none = the raw return (every rollout pushed up: high variance). bc's weights are all
    1, so any baseline (or returns.standardize) makes them 0: online bc is refused then."""

    def __post_init__(self):
        generation_config("online.generation", self.generation)
        one_of("online.partner", self.partner, ("simulator", "llm"))
        one_of("online.kl_estimator", self.kl_estimator, ("k1", "k2", "k3"))
        one_of("online.baseline", self.baseline, ONLINE_BASELINES)
        if self.baseline == "group_loo" and self.group < 2:
            raise ValueError(f"online.group: the leave-one-out baseline needs >= 2 rollouts, got {self.group}")
        if min(self.personas_per_step, self.steps) < 1:
            raise ValueError("online.personas_per_step and online.steps must be >= 1")


@dataclass
class Params:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model (ppg.models)."""
    build: BuildConfig = field(default_factory=BuildConfig)
    """Token sequences, windows, splits (ppg.data.build)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where data comes from and where imported data goes."""
    sim: SimConfig = field(default_factory=SimConfig)
    """The persona simulator (ppg.sim)."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """Per-turn rewards for dialogues without them, and the LLM endpoint (ppg.judges)."""
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    """Thresholds of the validation gate (ppg.data.validate)."""
    returns: ReturnsConfig = field(default_factory=ReturnsConfig)
    """Partial returns and weight shaping (ppg.returns)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Offline PPG training (ppg.train.offline)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation (ppg.evaluate.run)."""
    online: OnlineConfig = field(default_factory=OnlineConfig)
    """Online PPG against the simulator (ppg.train.online)."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    """Tracking (ppg.tracking)."""
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    """Registration and the promotion gate (ppg.registry)."""
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    """Watching the deployed champion's logs and the drift rule (ppg.monitor)."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """The Prefect pipeline (flows/pipeline.py): lock and schedule."""
    study: StudyConfig = field(default_factory=StudyConfig)
    """The K study (ppg.study.sim, `ppg study`)."""

    def __post_init__(self):
        from ppg.metrics import refuse_impossible

        refuse_impossible(self)

    def eval_judge(self) -> JudgeConfig:
        """The judge that grades online evaluation's rollouts (the judge section + eval.judge)."""
        from ppg.config_ops import judge_with

        return judge_with(self.judge, self.eval.judge, "eval.judge")

    @staticmethod
    def from_dict(data: dict, where: str) -> "Params":
        """The tree from parsed YAML; errors name `where` and the key."""
        return _build(Params, data, where)


def _build(cls, data, where, key=""):
    """cls from its mapping; errors read `FILE: section.key: what was expected`."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: {key or 'the top level'}: expected a mapping, got {type(data).__name__} "
                         f"{short(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ValueError(f"{where}: {key + ': ' if key else ''}unknown key(s) {', '.join(short(k) for k in unknown)}; "
                         f"known: {sorted(fields)}")
    check_fields(cls, data, where, key)
    kwargs = {}
    for name, value in data.items():
        sub = fields[name].default_factory if fields[name].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            value = _build(sub, value, where, f"{key}.{name}" if key else name)
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
    return Params.from_dict(read_yaml(path), str(path))
