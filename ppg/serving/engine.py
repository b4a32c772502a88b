"""Continuous batching for the served champion: one thread owns the model and decodes every chat
in flight together, one token per step, while new chats join between steps and finished ones
leave. A request's sampling is its own (temperature, top_p, seed, stop strings, max_tokens):
nothing of one request's settings reaches another.

The batch is a KV cache whose rows have different lengths. As in ppg.generation, a row's ids are
left-padded, the padding slots are masked out for good, and position ids count only the row's
real tokens, so each row is decoded as if it were alone. A joining group of prompts is prefilled
together into a cache of its own, which is then padded on the left to the batch's width and
stacked under it; rows that finish are dropped, and columns no row needs any more are cut off.
"""

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ppg.generation import GenerationConfig, last_position, warp


GREEDY_BELOW = 1e-3  # temperatures this close to 0 sample the argmax anyway: decode greedily


@dataclass
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Done:
    ids: list[int]  # the sampled ids (the end token included when one was sampled)
    text: str  # the reply, cut before the first stop string
    finish_reason: str  # stop (end token or stop string) or length
    prompt_tokens: int
    queued_s: float  # from submission to the prefill that started it


@dataclass
class _Row:
    prompt: list[int]
    sampling: Sampling
    future: Future
    submitted: float
    out: list[int] = field(default_factory=list)
    gen: torch.Generator | None = None
    started: float = 0.0


class BatchEngine:
    """submit(prompt ids, Sampling) -> Future[Done]; max_batch chats decode at once, the rest wait
    in order of arrival."""

    def __init__(self, model, tok, eos: set[int], max_batch: int = 16):
        self.model, self.tok, self.eos, self.max_batch = model, tok, eos, max_batch
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
        self.device = next(model.parameters()).device
        self.waiting: queue.Queue = queue.Queue()
        self.rows: list[_Row] = []
        self.cache = self.mask = self.seen = None
        self.steps = 0  # decoding steps taken (each a forward pass over every row in flight)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="ppg-batch-engine", daemon=True)
        self.thread.start()

    def submit(self, prompt: list[int], sampling: Sampling) -> Future:
        f: Future = Future()
        self.waiting.put(_Row(list(prompt), sampling, f, time.monotonic()))
        return f

    def close(self):
        self._stop.set()
        self.waiting.put(None)
        self.thread.join(timeout=10)

    def _loop(self):
        torch.set_grad_enabled(False)
        while not self._stop.is_set():
            joining = []
            if not self.rows:  # idle: block until a request comes
                first = self.waiting.get()
                if first is None:
                    return
                joining.append(first)
            while len(self.rows) + len(joining) < self.max_batch:
                try:
                    x = self.waiting.get_nowait()
                except queue.Empty:
                    break
                if x is None:
                    return
                joining.append(x)
            # a request cancelled while it waited is skipped; from here on its future cannot be cancelled
            joining = [r for r in joining if r.future.set_running_or_notify_cancel()]
            try:
                if joining:
                    self._join(joining)
            except Exception as e:  # the joining prompts failed (their prefill): they fail, the batch goes on
                for r in joining:
                    _settle(r.future, error=e)
                continue
            try:
                if self.rows:
                    self._step()
            except Exception as e:  # the shared step failed: every chat in flight fails, the server goes on
                for r in self.rows:
                    _settle(r.future, error=e)
                self.rows, self.cache = [], None

    def _forward(self, ids, mask, pos, cache):
        return self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                          logits_to_keep=last_position(ids.shape[1], ids.device)).logits[:, -1]

    def _join(self, rows: list[_Row]):
        """Prefill the joining prompts together, sample their first ids, and stack their cache
        under the batch's."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        for r in rows:  # before anything is touched: a bad seed fails only its own request
            if r.sampling.seed is not None:
                r.gen = torch.Generator().manual_seed(r.sampling.seed)
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[b, width - len(r.prompt):] = 1
            r.started = time.monotonic()
        mask = mask.to(self.device)
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids.to(self.device), mask, pos, cache)
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            raise ValueError("ppg serve-model batches full-attention caches only; this model has sliding-window "
                             "or other layers (serve it with vLLM)")
        if self.cache is None:
            self.cache, self.mask, self.seen = cache, mask, mask.sum(1)
        else:  # every new tensor first, then all of them in place: a failure here leaves the batch as it was
            extra = self.mask.shape[1] - width  # pad the narrower one on the left
            merged = [(torch.cat([_left_pad(mine.keys, -extra), _left_pad(theirs.keys, extra)]),
                       torch.cat([_left_pad(mine.values, -extra), _left_pad(theirs.values, extra)]))
                      for mine, theirs in zip(self.cache.layers, cache.layers)]
            new_mask = torch.cat([_left_pad(self.mask, -extra, dim=1), _left_pad(mask, extra, dim=1)])
            for layer, (k, v) in zip(self.cache.layers, merged):
                layer.keys, layer.values = k, v
            self.mask, self.seen = new_mask, torch.cat([self.seen, mask.sum(1)])
        self.rows += rows
        self._take(logits, range(len(self.rows) - len(rows), len(self.rows)))

    def _step(self):
        """One decoding step: every row's last sampled id goes in, its next id comes out."""
        last = torch.tensor([[r.out[-1]] for r in self.rows], device=self.device)
        self.mask = torch.cat([self.mask, torch.ones(len(self.rows), 1, dtype=torch.long, device=self.device)], 1)
        logits = self._forward(last, self.mask, self.seen[:, None], self.cache)
        self.seen += 1
        self.steps += 1
        self._take(logits, range(len(self.rows)))

    def _take(self, logits, which):
        """Sample the next id of the rows `which` from their logits rows; finish what is done."""
        finished = []
        for j, i in enumerate(which):  # logits row j is the j-th of `which`
            r = self.rows[i]
            try:
                r.out.append(sample(logits[j], r.sampling, r.gen))
                reason, text = self._finish(r)
            except Exception as e:  # one row's sampling failed: that chat fails, the others go on
                finished.append(i)
                _settle(r.future, error=e)
                continue
            if reason:
                finished.append(i)
                _settle(r.future, Done(r.out, text, reason, len(r.prompt), r.started - r.submitted))
        if finished:
            gone = set(finished)
            keep = [i for i in range(len(self.rows)) if i not in gone]
            self.rows = [self.rows[i] for i in keep]
            if not keep:
                self.cache = self.mask = self.seen = None
                return
            idx = torch.tensor(keep, device=self.device)
            self.cache.batch_select_indices(idx)
            self.mask, self.seen = self.mask[idx], self.seen[idx]
            cut = int((self.mask.sum(0) > 0).nonzero()[0])  # columns every remaining row has masked
            if cut:
                for layer in self.cache.layers:
                    layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
                self.mask = self.mask[:, cut:]

    def _finish(self, r: _Row) -> tuple[str | None, str]:
        ended, full = r.out[-1] in self.eos, len(r.out) >= r.sampling.max_tokens
        if not (r.sampling.stop or ended or full):  # nothing to look for in the text: no decoding per token
            return None, ""
        text = self.tok.decode(r.out, skip_special_tokens=True)
        for s in r.sampling.stop:  # OpenAI leaves the stop string out of the reply
            if s in text:
                return "stop", text[:text.index(s)].strip()
        if ended:
            return "stop", text.strip()
        if full:
            return "length", text.strip()
        return None, ""


def _settle(f: Future, result=None, error: Exception | None = None) -> None:
    """Give a request its result or error, unless it has one already."""
    from concurrent.futures import InvalidStateError

    try:
        if error is not None:
            f.set_exception(error)
        else:
            f.set_result(result)
    except InvalidStateError:
        pass


def _left_pad(x: torch.Tensor, n: int, dim: int = 2) -> torch.Tensor:
    """x with n zero slots before its entries along dim (none when n <= 0)."""
    if n <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim)


def sample(logits: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> int:
    """One id from a [V] logits row: greedy at temperature 0 (and below GREEDY_BELOW, where
    dividing the logits would overflow to infinities), else temperature then nucleus
    (transformers' warpers, as ppg.generation samples)."""
    if s.temperature < GREEDY_BELOW:
        return int(logits.argmax())
    probs = warp(logits[None], GenerationConfig(temperature=s.temperature, top_p=s.top_p)).softmax(-1)[0]
    return int(torch.multinomial(probs.cpu(), 1, generator=gen))
