"""Partial returns: the credit each turn gets from a SUBSET of its future rewards.

Turn t of dialogue b (0-based, trained speaker only, see docs/data-format.md) is credited with
    w[b, t] = sum_{j in S_t} gamma^(j - t) * rewards[b, j]
where S_t depends on the policy class (n = number of real turns of dialogue b):
    greedy   {t}
    kstep    {t, ..., min(t + k, n) - 1}          (k = 1 is greedy, k >= n is full)
    full     {t, ..., n - 1}                      (plain REINFORCE return)
    segment  {t, ..., last turn of t's segment}   (segments partition 0..n-1)
    bc       no rewards: w_t = 1 at every real turn (behaviour cloning, the SFT baseline; an
             unknown reward does not matter, a baseline or clip applies as to any weight)

Each class is a difference of two prefix sums, P[e] - P[t] with e the first turn past S_t
(suffix sums when gamma < 1), so the cost is O(B*T) whatever k is. A NaN reward is "unknown" (no verdict): w_t
is NaN exactly when S_t holds an unknown, every other w_t stays exact.
"""

from dataclasses import dataclass
from typing import Callable

import torch


def _segment_end(t, k, segments, n, T):
    return ((t // segments + 1) * segments).clamp(max=T)


@dataclass(frozen=True)
class CreditRule:
    """One policy class: the turns S_t = {t, ..., e_t - 1} it credits, given as e_t."""
    end: Callable | None  # (t [T], k, segment length, n [B], T) -> e: [T] (shared) or [B, 1]; None: bc, weight 1
    uses_length: bool = False  # end reads n, each dialogue's turn count (else it gets None: one pass saved)
    k_prefix: str = ""  # ids carry a horizon K: `<prefix><K>` (k3); "" = the id is the class name
    segments: bool = False  # reads the segment partition (returns.segments: a length or per-dialogue starts)
    horizon: Callable | None = None  # (k, turns) -> its credit horizon in the K study; None: not a K-step class
    control: bool = False  # uses no reward: trained and evaluated beside the policies, never registered


POLICIES = {
    "greedy": CreditRule(lambda t, k, seg, n, T: t + 1, horizon=lambda k, turns: 1),
    "kstep": CreditRule(lambda t, k, seg, n, T: (t + k).clamp(max=T), k_prefix="k", horizon=lambda k, turns: k),
    "full": CreditRule(lambda t, k, seg, n, T: n[:, None], uses_length=True, horizon=lambda k, turns: turns),
    "segment": CreditRule(_segment_end, segments=True),
    "bc": CreditRule(None, control=True),
}
"""The policy classes, one entry each: ids, returns, online training and the K study read it.
ppg.reference.credited_turns is the independent loop that checks it (it does not read this)."""


def shaping_zeroes_bc(baseline: str, standardize: bool) -> bool:
    """bc's weights are all 1, so a baseline (or centring by standardize) makes every one 0: a
    bc run with such shaping would train nothing."""
    return baseline != "none" or bool(standardize)


def is_control(policy_id: str) -> bool:
    """A control (bc: plain fine-tuning on the same turns) shows what training does without the
    rewards; the pipeline compares every policy with it and never registers it."""
    return POLICIES[parse_policy_id(policy_id)[0]].control


def trained_shaping(policy_id: str, baseline: str, standardize: bool, clip) -> tuple[str, bool, list | None]:
    """The (baseline, standardize, clip) a policy trains with offline: returns' settings, except
    for a control (bc), whose weights are all 1 and which any baseline or centring would zero (a clip could
    scale them): the control trains unshaped (plain fine-tuning), whatever the policies use."""
    if is_control(policy_id):
        return "none", False, None
    return baseline, standardize, clip


def _id_grammar() -> str:
    return ", ".join(f"{r.k_prefix}<K> with K >= 1 (e.g. {r.k_prefix}3)" if r.k_prefix else name
                     for name, r in POLICIES.items())


def parse_policy_id(policy_id: str) -> tuple[str, int | None]:
    """`greedy` | `k<K>` | `full` | `segment` | `bc` (POLICIES) -> (policy class, k). The ids of
    CLI, DVC and MLflow."""
    for name, rule in POLICIES.items():
        if not rule.k_prefix and policy_id == name:
            return name, None
        rest = policy_id.removeprefix(rule.k_prefix) if rule.k_prefix and policy_id.startswith(rule.k_prefix) else ""
        if rest.isdigit() and rest.isascii() and int(rest) >= 1:
            return name, int(rest)
    raise ValueError(f"policy id {policy_id!r}: expected {_id_grammar()}")


def policy_id(policy: str, k: int | None = None) -> str:
    """Inverse of parse_policy_id: ('kstep', 3) -> 'k3'."""
    rule = credit_rule(policy)
    if rule.k_prefix:
        if k is None or k < 1:
            raise ValueError(f"k: {policy} needs k >= 1, got {k!r}")
        return f"{rule.k_prefix}{k}"
    return policy


def credit_rule(policy: str) -> CreditRule:
    """The table's entry; an unknown class is an error naming the known ones."""
    if policy not in POLICIES:
        raise ValueError(f"policy: {policy!r} is not one of {tuple(POLICIES)}")
    return POLICIES[policy]


def _check(rewards, mask, policy, k, segments, gamma):
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 2 or not rewards.is_floating_point():
        raise ValueError("rewards: expected a float tensor [B, T]")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != rewards.shape:
        raise ValueError(f"mask: expected a bool tensor of shape {tuple(rewards.shape)} (same as rewards)")
    if (mask[:, 1:] & ~mask[:, :-1]).any():
        raise ValueError("mask: not left-aligned (a padding turn is followed by a real turn)")
    if (torch.isinf(rewards) & mask).any():
        raise ValueError("rewards: ±inf at a real turn (use NaN for an unknown reward)")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma: must be in (0, 1], got {gamma}")
    rule = credit_rule(policy)
    if rule.k_prefix and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"k: {policy} needs an int k >= 1, got {k!r}")
    if rule.segments:
        if isinstance(segments, torch.Tensor):
            if segments.dtype != torch.bool or segments.shape != mask.shape:
                raise ValueError(f"segments: a segment-start mask must be bool of shape {tuple(mask.shape)}")
            if mask.shape[1] and (mask[:, 0] & ~segments[:, 0]).any():
                raise ValueError("segments: turn 0 must start a segment (False at turn 0)")
            if (segments & ~mask).any():
                raise ValueError("segments: a segment starts at a padding turn")
        elif isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
            raise ValueError(f"segments: expected an int segment length >= 1 or a bool start mask, got {segments!r}")


def _window_sums(x, e, gamma):
    """w[b, t] = sum_{t <= j < e} gamma^(j-t) x[b, j] for finite x that is 0 at padding."""
    B, T = x.shape
    shared = e.dim() == 1
    if gamma == 1.0:  # prefix sums P[t] = sum_{j<t} x[j]: w = P[e] - P[t], no loop at all
        P = x.new_empty((B, T + 1))
        P[:, 0] = 0
        torch.cumsum(x, 1, out=P[:, 1:])
        return (P.index_select(1, e) if shared else P.gather(1, e)) - P[:, :T]
    # gamma < 1: suffix sums G[t] = x[t] + gamma G[t+1] by a loop over the T turns (time-major:
    # no gamma^-t factor to overflow), then w = G[t] - gamma^(e-t) G[e]. G[n] = 0 (padding), so
    # full needs no tail.
    xt = x.T.contiguous()
    G = x.new_empty((T + 1, B))
    G[T] = 0
    for j in range(T - 1, -1, -1):
        torch.add(xt[j], G[j + 1], alpha=gamma, out=G[j])
    w = G[:T]
    if shared:
        span = (e - torch.arange(T, device=x.device))[:, None].to(x.dtype)
        w = w - G.index_select(0, e) * torch.pow(gamma, span)
    return w.T.contiguous()


def _segment_sums(x, starts, gamma):
    """Sums to the end of each turn's segment when segments differ per dialogue (a start mask):
    one backward pass over the T turns, w[t] = x[t] + gamma * w[t+1] unless turn t+1 starts a
    segment. O(B*T) vector work; 2.6x faster here than gathering per-dialogue end indices, and
    a NaN never crosses a segment start, so unknowns need no second pass."""
    if x.shape[1] == 0:
        return x.clone()
    xt, st = x.T.contiguous(), starts.T.contiguous()
    w = torch.empty_like(xt)
    w[-1] = xt[-1]
    for j in range(x.shape[1] - 2, -1, -1):
        torch.add(xt[j], w[j + 1].masked_fill(st[j + 1], 0), alpha=gamma, out=w[j])
    return w.T.contiguous()


def policy_weights(rewards, mask, segment_starts, policies: list[str], gamma: float = 1.0) -> dict:
    """Unshaped partial returns of every policy id (e.g. greedy, k3, full, segment, bc) over one
    turn batch (ppg.data.turns.TurnBatch's tensors): what `ppg returns` shows and `ppg build`
    stores, so the two can never disagree (on gamma, on segments)."""
    out = {}
    for pid in policies:
        policy, k = parse_policy_id(pid)
        out[pid] = partial_returns(rewards, mask, policy, k=k, segments=segment_starts, gamma=gamma)
    return out


def partial_returns(rewards, mask, policy, k=None, segments=None, gamma=1.0, validate=True):
    """Partial returns w[B, T] (dtype of rewards; 0 at padding, NaN where S_t holds an unknown).

    rewards: float [B, T] per-turn rewards of the trained speaker; NaN = unknown.
    mask: bool [B, T], True at real turns, left-aligned.
    policy: "greedy" | "kstep" | "full" | "segment" | "bc"; k: lookahead for kstep.
    segments: for segment, an int segment length or a bool [B, T] mask True at segment starts.
    gamma: discount inside the credited subset, in (0, 1]; 1.0 is the paper's plain sum.
    validate: check arguments and raise ValueError naming the bad one (skip for speed).
    Sums run in the dtype of rewards: float32 is accurate to about T * ulp(sum of a dialogue's
    rewards) (~1e-5 for 60 turns of rewards in [0, 1]); pass float64 for more.
    """
    rule = credit_rule(policy)
    if validate:
        _check(rewards, mask, policy, k, segments, gamma)
    if rule.end is None:
        return mask.to(rewards.dtype)  # every logged turn counts once, whatever its reward
    x = torch.where(mask, rewards, 0)  # padding values never reach a sum
    if rule.segments and isinstance(segments, torch.Tensor):
        return _segment_sums(x, segments, gamma)
    T = x.shape[1]
    t = torch.arange(T, device=x.device)
    # e: first turn past S_t, clamped to T (any e >= n works: rewards are 0 there); [T] when it is
    # the same for every dialogue, [B, 1] when it depends on the dialogue (full)
    e = rule.end(t, k, segments, mask.sum(1) if rule.uses_length else None, T)
    if e.dim() == 1 and torch.equal(e, t + 1):
        return x  # S_t = {t} (greedy, k1, segments of 1): exactly the rewards, no sums to round
    w = _window_sums(x, e, gamma)
    # Unknowns: only dialogues holding one are redone, with NaN as 0 plus a count of unknowns
    # in each window; a NaN is never carried through a prefix sum into other turns' weights.
    bad = torch.isnan(x.sum(1)).nonzero().squeeze(1)
    if len(bad):
        xb = x[bad]
        unknown = torch.isnan(xb)
        eb = e if e.dim() == 1 else e[bad]
        wb = _window_sums(xb.masked_fill(unknown, 0.0), eb, gamma)
        count = _window_sums(unknown.to(x.dtype), eb, 1.0)
        w[bad] = wb.masked_fill(count > 0.5, float("nan"))
    return w


# --- baselines and weight shaping -------------------------------------------------------------
# Raw partial returns are all >= 0 when rewards are in [0, 1]: reward-weighted likelihood then
# only reweights the logged behaviour, and a long horizon adds a large common offset. Baselines
# remove that offset; standardization fixes the scale. All statistics ignore NaN weights, and a
# NaN weight stays NaN (it is excluded and counted by the loss, never turned into a number).

BASELINES = ("none", "batch_mean", "turn_mean", "group_loo", "turn_kind")


def _valid(w, mask):
    return mask & ~torch.isnan(w)


def _masked_mean(w, valid, dim=None):
    x = torch.where(valid, w, 0).double()
    if dim is None:
        return x.sum() / valid.sum().clamp(min=1)
    return x.sum(dim) / valid.sum(dim).clamp(min=1)


def _loo_mean(w, valid, key):
    """Leave-one-out mean of the known weights sharing each cell's int key (any shape): the mean
    over the OTHER known cells with the same key; NaN where there is none. Keys of the form
    code * T + t never collide across (code, t) pairs for any int codes, since 0 <= t < T."""
    _, k = torch.unique(key, return_inverse=True)
    x = torch.where(valid, w, 0).double()
    n = int(k.max()) + 1 if k.numel() else 0
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, k.flatten(), x.flatten())
    counts = torch.zeros(n, dtype=torch.float64).index_add_(0, k.flatten(), valid.double().flatten())
    peers = counts[k] - valid.double()
    return torch.where(peers > 0, (sums[k] - x) / peers, float("nan"))


def baseline(w, mask, kind="none", groups=None, kinds=None):
    """The baseline b[B, T] to subtract from w (0 at padding).

    none: 0.  batch_mean: mean of all known weights in the batch.
    turn_mean: mean of known weights at the same turn index t. Biased when dialogues differ in
      length: (1) only dialogues with more than t turns reach index t, and a kstep/full return
      grows with the turns left (min(k, n - t)), so at one index long dialogues sit above the
      mean and short ones below it: the advantage then tracks dialogue length, not the quality
      of a_t; (2) the mean includes w_t itself, shrinking its advantage by (1 - 1/N_t), and at an
      index reached by one dialogue the advantage is exactly 0. Prefer group_loo when prompts repeat.
    group_loo: leave-one-out mean at the same turn index over the OTHER dialogues of the same
      group (groups: int [B], e.g. dialogues sharing a persona); unbiased. A turn with no known
      peer has no baseline: its b is NaN, so its weight becomes NaN (excluded and counted).
    turn_kind: leave-one-out mean at the same turn index over the OTHER dialogues' turns of the
      same kind (kinds: int [B, T], codes of a per-turn key such as the simulator's filler /
      ask-stated / ask-open / probe; one code everywhere = leave-one-out turn_mean). No peer: NaN,
      as group_loo. The kind must be known before the reply (read from the context, never from
      a_t), else the baseline leaks the action. Offline, w - b re-weights the likelihood of the
      logged replies by how much their return beat the behaviour's average among like turns: an
      open ask's dodge is compared with other open asks only, not with answered stated facts.
      With clipping at 0 (the study's shaping) the objective is sum_t max(w_t - b_t, 0) log pi(a_t
      | x_t): imitate the replies that beat their kind's average, ignore the rest. It is biased
      where one kind's index is reached only by some dialogues (as turn_mean, bias 1) and where a
      kind pools decisions of different worth (a coarse key gives back turn_mean's mixing).
    """
    valid = _valid(w, mask)
    if kind == "none":
        b = torch.zeros_like(w, dtype=torch.float64)
    elif kind == "batch_mean":
        b = _masked_mean(w, valid).expand(w.shape)
    elif kind == "turn_mean":
        b = _masked_mean(w, valid, dim=0).expand(w.shape)
    elif kind == "group_loo":
        if groups is None or groups.shape != (w.shape[0],):
            raise ValueError(f"groups: group_loo needs an int tensor of shape [{w.shape[0]}]")
        b = _loo_mean(w, valid, groups[:, None] * w.shape[1] + torch.arange(w.shape[1]))
    elif kind == "turn_kind":
        if kinds is None or kinds.shape != w.shape or kinds.is_floating_point():
            raise ValueError(f"kinds: turn_kind needs an int tensor of turn-kind codes of shape {tuple(w.shape)}")
        b = _loo_mean(w, valid, kinds * w.shape[1] + torch.arange(w.shape[1]))
    else:
        raise ValueError(f"baseline: {kind!r} is not one of {BASELINES}")
    return torch.where(mask, b, 0)


def shape_weights(w, mask, baseline_kind="none", standardize=False, groups=None, eps=1e-8, clip=None, kinds=None):
    """w - baseline, then (optionally) divided by the std of the known results, then (optionally)
    clipped to clip=(low, high) (either may be None). 0 at padding; NaN stays NaN. Clipping the
    low end bounds the push-down on bad turns: with negative weights, reward-weighted likelihood
    is unbounded below and can wreck a model at a high learning rate."""
    a = w.double() - baseline(w, mask, baseline_kind, groups, kinds)
    if standardize:
        valid = _valid(a, mask)
        mean = _masked_mean(a, valid)
        var = _masked_mean((a - mean) ** 2, valid)
        # without a baseline, standardization also centres (the usual z-score)
        centre = mean if baseline_kind == "none" else 0.0
        a = (a - centre) / (var.sqrt() + eps)
    if clip is not None:
        a = a.clamp(min=clip[0], max=clip[1])  # NaN passes through clamp unchanged
    return torch.where(mask, a, 0).to(w.dtype)
