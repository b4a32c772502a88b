"""How a batch of dialogues gets its replies: the policy's side of a rollout, behind one small
interface (Replier) so that another backend (a vLLM or SGLang server) can be added beside these.

Each dialogue of the batch is a row whose context only grows: on every call the replier is given,
per row still playing, the ids appended since its last reply (the template text and the partner's
line) and answers with the ids it sampled (its end token included when it sampled one). Its
context is then everything it was given plus everything it sampled, in order.

- CachedReplies (default) keeps the batch's KV cache across turns: a turn costs the forward pass
  of its new ids, not of the whole dialogue. Rows of different lengths share the cache: a row's
  new ids are left-padded within each chunk, the padding slots are masked out for good, and
  position ids count only the row's real tokens, so every row sees exactly its own context at
  the positions a single-row forward pass would give it.
- Reencoded runs transformers' `generate` over the whole dialogue every turn (the path before
  the cache; kept as the reference the benchmark and tests compare with)."""

from typing import Protocol

import torch

# the config lives with the other sections, so that reading params does not import this module
from ppg.config_rollout import BACKEND_NAMES, GenerationConfig, generation_config  # noqa: F401


def generate_kwargs(gen: GenerationConfig, pad: int) -> dict:
    """transformers' `generate` arguments that sample exactly what `warp` gives (temperature, then
    top-p). generate fills every field left unset from the model's generation_config and then from
    its own defaults, top_k=50 among them (None counts as unset), so the other warpers, the
    penalties, beams and a minimum length are switched off by name: the generate backend and the
    LLM partner then sample the distribution the cache backend samples. (List-valued settings a
    model's generation_config may carry, such as suppress_tokens, cannot be unset this way; the
    distribution test in tests/test_generation.py would show one.)"""
    neutral = dict(repetition_penalty=1.0, no_repeat_ngram_size=0, num_beams=1, min_new_tokens=0,
                   max_new_tokens=gen.max_new_tokens, pad_token_id=pad)
    if gen.temperature == 0:
        return dict(neutral, do_sample=False)
    return dict(neutral, do_sample=True, temperature=gen.temperature, top_p=gen.top_p, top_k=0, min_p=0.0,
                typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)


class Replier(Protocol):
    """One batch of dialogues' replies, row by row (what ppg.rollout and evaluation read)."""

    prefilled: int
    """Ids fed at the start of turns so far, all rows: what the turns cost beyond one decoding
    step per sampled id (the same on every backend)."""

    def reply(self, rows: list[int], new_ids: list[list[int]]) -> list[list[int]]:
        """Each listed row's reply to its context extended by its new ids. A row left out of rows
        has ended and is never asked again."""

    def extend(self, new_ids: list[list[int]]) -> None:
        """Extend every row's context without replying (a prefix that several rows will share)."""

    def branch(self, rows: list[int]) -> None:
        """Go on as len(rows) rows, the i-th a copy of row rows[i] (questions asked after one
        dialogue share its encoding)."""


def end_ids(model, tok) -> set[int]:
    """The ids that end a reply: the model's generation_config eos ids and the tokenizer's."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids] if ids is not None else [])
    return ids | ({tok.eos_token_id} if tok.eos_token_id is not None else set())


def warp(logits: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
    """[B, V] next-token logits -> the logits sampled from: transformers' own temperature and
    nucleus warpers, in the order and under the conditions its generate applies them, so both
    backends sample from one distribution."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    logits = logits.float()
    if gen.temperature != 1.0:
        logits = TemperatureLogitsWarper(gen.temperature)(None, logits)
    if gen.top_p < 1.0:
        logits = TopPLogitsWarper(gen.top_p)(None, logits)
    return logits


CANDIDATES = 1024
"""Top-p looks for each row's nucleus among this many most likely ids first."""


def nucleus(logits: torch.Tensor, gen: GenerationConfig) -> tuple[torch.Tensor, torch.Tensor] | None:
    """warp's top-p distribution found among the CANDIDATES most likely ids: ([B, C] ids, [B, C]
    unnormalized probabilities, 0 for an id outside the nucleus), or None when some row's
    candidates hold less than top_p. An id is kept when the mass of the ids more likely than it is
    below top_p (warp's rule, its cumulative sum taken from the other end); an id outside the
    candidates has at least their whole mass above it, so it is out of the nucleus too."""
    probs = logits.float()
    if gen.temperature != 1.0:
        probs = probs / gen.temperature  # as transformers' TemperatureLogitsWarper divides
    top, ids = probs.softmax(-1).topk(min(CANDIDATES, logits.shape[-1]), -1)
    above = top.cumsum(-1) - top  # the mass of the more likely candidates
    if bool((above[:, -1] + top[:, -1] < gen.top_p).any()):
        return None
    keep = above < gen.top_p
    keep[:, 0] = True  # warp keeps at least one id
    return ids, top * keep


def sample_next(logits: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
    """[B, V] next-token logits -> [B] ids: greedy at temperature 0, else a draw from warp's
    distribution. With top-p the draw is among the nucleus's candidates: warp sorts the whole
    vocabulary and a draw over all of it costs as much again (17 ms a step for 8 rows of SmolLM2's
    49,152 ids, a quarter of a decoding step; a top-k and a draw among 1,024 take under 1 ms)."""
    if gen.temperature <= 0:
        return logits.argmax(-1)
    found = nucleus(logits, gen) if gen.top_p < 1.0 else None
    if found is None:
        return torch.multinomial(warp(logits, gen).softmax(-1), 1)[:, 0]
    ids, probs = found
    return ids.gather(-1, torch.multinomial(probs, 1))[:, 0]


def last_position(width: int, device) -> torch.Tensor:
    """The logits a step needs (the last position's), as an index tensor rather than
    logits_to_keep=1: the int slices the hidden states [B, 1, H] out of [B, W, H] as a strided
    view, and torch.matmul then expands the tied output embedding to [B, H, V] and copies it
    (0.5 s per call for SmolLM2 at any W > 1, most of a prefill); the index gathers a contiguous
    [B, 1, H] and the product is one mm. The same logits, id for id."""
    return torch.tensor([width - 1], device=device)


class CachedReplies:
    """Replies for one batch of dialogues from a KV cache kept across turns."""

    def __init__(self, model, n: int, gen: GenerationConfig, eos: set[int], pad: int):
        self.model, self.gen, self.eos, self.pad = model, gen, eos, pad
        self.device = next(model.parameters()).device
        from ppg.kv_cache import growing_cache

        self.cache = growing_cache(model.config)
        self.rows = list(range(n))  # the batch row of each cache row
        self.mask = torch.zeros(n, 0, dtype=torch.long, device=self.device)  # 1: a real token's slot
        self.seen = torch.zeros(n, dtype=torch.long, device=self.device)  # real tokens so far: the next position
        self.pending = [[] for _ in range(n)]  # sampled but not yet in the cache: each reply's last id
        self.prefilled = 0  # ids fed at the start of a turn, all rows (decoding adds one per step on both paths)

    def _keep(self, rows: list[int]):
        if rows != self.rows:
            self._select([self.rows.index(r) for r in rows], list(rows))

    def _select(self, keep: list[int], rows: list[int]):
        if self.mask.shape[1]:  # a repeated index copies the row
            self.cache.batch_select_indices(torch.tensor(keep, device=self.device))
        self.mask, self.seen = self.mask[keep], self.seen[keep]
        self.pending, self.rows = [list(self.pending[i]) for i in keep], rows

    def extend(self, new_ids):
        self._feed([p + list(x) for p, x in zip(self.pending, new_ids)], prefill=True)
        self.pending = [[] for _ in self.rows]

    def branch(self, rows):
        self._select([self.rows.index(r) for r in rows], list(range(len(rows))))

    def _feed(self, chunks: list[list[int]], prefill: bool = False) -> torch.Tensor:
        """Append each row's chunk to the cache (an empty chunk adds a masked slot); the logits
        after each row's last id [B, V] (meaningless for an empty chunk)."""
        width = max(1, max(len(c) for c in chunks))
        ids = torch.full((len(chunks), width), self.pad, dtype=torch.long)
        real = torch.zeros(len(chunks), width, dtype=torch.long)
        for b, c in enumerate(chunks):
            if c:
                ids[b, width - len(c):] = torch.tensor(c)
                real[b, width - len(c):] = 1
        real = real.to(self.device)
        # positions continue the row's real tokens; a padding slot repeats its neighbour's (never read)
        pos = (self.seen[:, None] + real.cumsum(1) - 1).clamp(min=0)
        self.mask = torch.cat([self.mask, real], 1)
        out = self.model(input_ids=ids.to(self.device), attention_mask=self.mask, position_ids=pos,
                         cache=self.cache, use_cache=True, logits_to_keep=last_position(width, self.device))
        self.seen += real.sum(1)
        if prefill:
            self.prefilled += int(real.sum())
        return out.logits[:, -1]

    def reply(self, rows, new_ids):
        self._keep(rows)
        logits = self._feed([p + list(x) for p, x in zip(self.pending, new_ids)], prefill=True)
        out = [[] for _ in rows]
        done = [False] * len(rows)
        for step in range(self.gen.max_new_tokens):
            nxt = sample_next(logits, self.gen).tolist()
            for b, x in enumerate(nxt):
                if not done[b]:
                    out[b].append(x)
                    done[b] = x in self.eos
            if all(done) or step == self.gen.max_new_tokens - 1:
                break
            # a row that has just ended keeps its end token pending; it enters with the next turn
            logits = self._feed([[] if done[b] else [out[b][-1]] for b in range(len(rows))])
        self.pending = [o[-1:] for o in out]
        return out


class Reencoded:
    """Replies from transformers' generate, re-encoding each whole dialogue every turn."""

    def __init__(self, model, n: int, gen: GenerationConfig, eos: set[int], pad: int):
        self.model, self.gen, self.eos, self.pad = model, gen, eos, pad
        self.device = next(model.parameters()).device
        self.context = [[] for _ in range(n)]
        self.prefilled = 0  # ids encoded at the start of a turn, all rows

    def extend(self, new_ids):
        for c, x in zip(self.context, new_ids):
            c += list(x)

    def branch(self, rows):
        self.context = [list(self.context[r]) for r in rows]

    def reply(self, rows, new_ids):
        for r, x in zip(rows, new_ids):
            self.context[r] += list(x)
        width = max(len(self.context[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, r in enumerate(rows):  # left padding: every row's next token is at the end
            n = len(self.context[r])
            ids[b, width - n:] = torch.tensor(self.context[r])
            attn[b, width - n:] = 1
        self.prefilled += int(attn.sum())
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=attn.to(self.device),
                                  **generate_kwargs(self.gen, self.pad))
        replies = []
        for b, r in enumerate(rows):
            new = out[b, width:].tolist()
            stop = next((j for j, x in enumerate(new) if x in self.eos), None)
            replies.append(new if stop is None else new[:stop + 1])  # its end token is its own
            self.context[r] += replies[-1]
        return replies


BACKENDS = {"cache": CachedReplies, "generate": Reencoded}
assert tuple(BACKENDS) == BACKEND_NAMES, "a backend must be named in ppg.config_rollout.BACKEND_NAMES too"


class Backend(Protocol):
    """Where replies come from: built once from the generation settings, the tokenizer and the
    model (a server's backend would take its address and model name instead), asked for one
    Replier per batch of dialogues."""

    def batch(self, n: int) -> Replier:
        """A Replier for n new dialogues."""

    def load_weights(self, model) -> None:
        """The policy's weights changed (online training calls this after every optimizer step).
        A backend over the model in this process reads the live weights and has nothing to do; a
        backend that keeps its own copy (a vLLM server) pushes them here before the next batch."""


class InProcess:
    """A backend over a model in this process: `cache` or `generate` repliers (BACKENDS)."""

    def __init__(self, replier, model, tok, gen: GenerationConfig):
        self.replier, self.model, self.gen = replier, model, gen
        self.eos, self.pad = end_ids(model, tok), tok.pad_token_id

    def batch(self, n: int) -> Replier:
        return self.replier(self.model, n, self.gen, self.eos, self.pad)

    def load_weights(self, model) -> None:
        self.model = model  # the same module object in place: nothing to copy


def backend(gen: GenerationConfig, tok, model) -> Backend:
    """The backend gen.backend names, over this model."""
    return InProcess(BACKENDS[gen.backend], model, tok, gen)
