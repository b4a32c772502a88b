"""params.yaml's study section: the K study in the simulator (`ppg study`), its online cells, and
the real-data study (`ppg study-real`). (Part of the one config tree of ppg.config.)"""

from dataclasses import dataclass, field


@dataclass
class RealStudyConfig:
    out: str = "study-real"
    """Cells go to OUT/cells/<cell>/ (turns.jsonl marks a finished cell), built data to OUT/data/."""
    domains: list = field(default_factory=lambda: ["chatting", "education", "therapy"])
    """Consistent-LLMs domains (files <domain>__*.json of --data)."""
    policies: list = field(default_factory=lambda: ["bc", "greedy", "k3", "full"])
    """Policy ids trained per domain and fold (segment uses returns.segments: fixed-length on real data).
    bc (w_t = 1: plain fine-tuning on the same turns, rewards unused) is the control that tells a
    reward effect from domain adaptation; it trains with the "raw" weighting only (a baseline zeroes it)."""
    weights: list = field(default_factory=lambda: ["raw", "shaped"])
    """Names from study.weights."""
    model: str = "smollm2-135m"
    """Model spec (the untrained model is the likelihood-ratio reference)."""
    lora: bool = True
    """LoRA (train.lora's r/alpha/targets) or a full fine-tune."""
    max_dialogues: int = 40
    """Seeded subsample of each domain's dialogues (0 = all): the CPU budget."""
    folds: int = 2
    """Persona-grouped folds per domain (each cell trains on the others: 2 keeps the CPU budget)."""
    max_turns: int = 40
    """Judged turns scored per fold (0 = all): windows with a contradicting turn first, up to half
    of them, then others (seeded); the reference's log-probs are cached per fold for every cell."""
    max_length: int = 1024
    """Token windows (persona + recent history); longer dialogues are cut into several. Chatting's
    backstories take up to 762 SmolLM2 tokens (median 521), so 512 cannot hold them."""
    steps: int = 6
    """Offline PPG steps per cell."""
    batch_size: int = 2
    """Sequences per step."""
    lr: float = 1.0e-3
    """Peak learning rate (LoRA; linear warm-up over 10% of steps, then linear decay)."""

    def __post_init__(self):
        if self.folds < 2:
            raise ValueError(f"study.real.folds: cross-validation needs >= 2 folds, got {self.folds}")


@dataclass
class OnlineStudyConfig:
    distances: list = field(default_factory=lambda: [2, "end"])
    """Distances with online cells (per seed and policy); [] = none."""
    policies: list = field(default_factory=lambda: ["greedy", "k3", "full"])
    """Policy ids trained online from the study base."""
    seeds: list | None = None
    """Seeds of the online cells (null = study.seeds): they are not part of the settling test, and
    one costs ~4 offline cells, so a study that adds seeds for the test can leave them out."""
    steps: int = 30
    """Online PPG steps per cell (each plays personas_per_step * group dialogues)."""
    personas_per_step: int = 8
    """Scenes per step."""
    group: int = 4
    """Rollouts per scene (leave-one-out baseline)."""
    lr: float = 3.0e-4
    """Peak learning rate."""
    kl_coef: float = 0.05
    """KL penalty to the study base."""


@dataclass
class StudyConfig:
    out: str = "study"
    """Cells go to OUT/cells/<cell>/ (metrics.json marks a finished cell: a rerun skips it)."""
    distances: list = field(default_factory=lambda: [1, 2, 3, "end"])
    """Dependency distances d swept (the simulator's ask -> probe gap; "end" = at the last turn)."""
    known: int = 4
    """Facts the backstory states (of 8); the rest are open (the tempting decision)."""
    probes: int = 1
    """Probes per fact, in a row from d turns after its ask (sim.domains' probes): an exposed
    invention loses each one, so more probes make exposure cost more."""
    evasive_reward: float | None = None
    """Reward of a dodge at an ask in the study's world (null = sim.evasive_reward). With probes,
    it decides which K flips the decision (ppg.sim.expected, docs/simulator.md)."""
    turns: int = 8
    """Persona turns per dialogue; policies k<K> with K >= turns are skipped (they equal full)."""
    policies: list = field(default_factory=lambda: ["greedy", "k2", "k3", "k5", "full", "segment"])
    """Policy ids trained in every cell."""
    sizes: list = field(default_factory=lambda: [100, 300, 1000])
    """Training set sizes (logged dialogues)."""
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    """Seeds: data, initialization and evaluation personas per seed."""
    weights: dict = field(default_factory=lambda: {"raw": {"baseline": "none", "standardize": False, "clip": None},
                                                   "shaped": {"baseline": "turn_mean", "standardize": False,
                                                              "clip": [0.0, None]}})
    """Weight shapings compared (name -> returns.baseline/standardize/clip)."""
    model: str = "tiny"
    """Model spec of the study base (full fine-tuning: the tiny model has no use for LoRA)."""
    base_dialogues: int = 2000
    """Behaviour dialogues (every distance mixed, a seed of its own) the study base clones."""
    base_steps: int = 1500
    """Behaviour-cloning steps of the study base, trained once; every cell starts from it."""
    base_lr: float = 3.0e-3
    """Peak learning rate of the study base."""
    base_batch_size: int = 16
    """Sequences per step of the study base."""
    steps: int = 100
    """Offline PPG steps per cell, from the study base."""
    batch_size: int = 8
    """Sequences (dialogues) per step of a cell."""
    lr: float = 2.0e-3
    """Peak learning rate of a cell (linear warm-up over the first 5% of steps, then linear decay)."""
    personas: int = 96
    """Held-out personas per cell (validation split), sampled in one batch."""
    temperature: float = 1.0
    """Sampling temperature of the evaluation rollouts (1 = the trained distribution itself)."""
    online: OnlineStudyConfig = field(default_factory=OnlineStudyConfig)
    """Online PPG cells (rollouts against the simulator's partner, exact judge) from the same base."""
    real: RealStudyConfig = field(default_factory=RealStudyConfig)
    """The real-data part (`ppg study-real --data DIR`)."""

    def __post_init__(self):
        if isinstance(self.probes, bool) or not isinstance(self.probes, int) or self.probes < 1:
            raise ValueError(f"study.probes: expected an int >= 1, got {self.probes!r}")
        if self.evasive_reward is not None and not 0.0 <= self.evasive_reward < 1.0:
            raise ValueError(f"study.evasive_reward: must be in [0, 1) or null, got {self.evasive_reward}")
        unknown = [w for w in self.real.weights if w not in self.weights]
        if unknown:
            raise ValueError(f"study.real.weights: {unknown} not in study.weights ({sorted(self.weights)})")
        if "bc" in self.real.policies and "raw" not in self.weights:
            raise ValueError("study.real.policies: bc trains with the weighting named 'raw', which study.weights lacks")
