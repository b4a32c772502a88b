"""The LLM partner's two forms: a causal LM in this process (InProcessPartner), or a model behind
an OpenAI-compatible chat-completions endpoint (EndpointPartner: a 70B user simulator on a vLLM
server, a hosted API). Both see the same chat: the partner's prompt as the system message, an
opening cue, then its own lines as assistant turns and the persona's as user turns; both speak
`turns` times per dialogue, then end it.

The in-process partner keeps each batch's KV cache across turns, like the policy's side
(ppg.generation): a turn prefills only the text since its last reply, and its own sampled ids
stay in its context as sampled (gen.backend generate re-encodes the dialogue every turn instead:
the reference). The endpoint partner sends the whole chat each turn (the server keeps whatever
prefix cache it has); its replies are sampled, so nothing is cached here. A request that still
fails after the endpoint's retries drops its dialogue (Drop): it is counted by the caller and
left out of every metric, never judged shortened.
"""

import asyncio
import os
from types import SimpleNamespace

from ppg.data.build import end_of_turn_marker, sentinel
from ppg.data.schema import as_text
from ppg.generation import backend, end_ids
from ppg.rollout import Drop, Episode, text_since_reply


def partner_messages(e: Episode, system: str, opening: str, own: list[str] | None = None) -> list[dict]:
    """The partner's chat of an episode so far. own: what stands for the partner's earlier
    lines (default: their text)."""
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": opening}]
    k = 0
    for ln in e.lines:  # the partner opens after the cue; then the two alternate
        if ln["speaker"] == e.partner:
            msgs.append({"role": "assistant", "content": own[k] if own is not None else ln["text"]})
            k += 1
        else:
            msgs.append({"role": "user", "content": ln["text"]})
    return msgs


def _line(text: str) -> str:
    return as_text(text.strip()) or "..."  # a line is never empty (the schema refuses one)


class InProcessPartner:
    """A causal LM beside the policy that plays the partner; chat(e) -> (system, opening) is the
    partner's prompt for an episode (ppg.partner)."""

    def __init__(self, model, tok, turns: int, gen, chat):
        self.model, self.tok, self.turns, self.gen, self.chat = model, tok, turns, gen, chat
        self.replies = backend(gen, tok, model)
        self.eot, self.eos = end_of_turn_marker(tok), end_ids(model, tok)
        self.replier, self.row, self.last = None, {}, {}  # the batch's replier; dialogue -> row, last sampled ids

    def reply(self, episodes: list[Episode]) -> list[str | None]:
        out: list[str | None] = [None] * len(episodes)
        live = [i for i, e in enumerate(episodes) if len(e.partner_lines()) < self.turns]
        if not live:
            self.replier = None  # the batch is over: its cache is not kept through a training step
            return out
        if all(not episodes[i].partner_lines() for i in live):  # play's first call of a batch: all of it
            self.replier = self.replies.batch(len(episodes))
            self.row = {e.dialogue_id: r for r, e in enumerate(episodes)}
            self.last = {}
        new = []
        for i in live:
            e = episodes[i]
            said = len(e.partner_lines())
            system, opening = self.chat(e)
            msgs = partner_messages(e, system, opening, [sentinel(j) for j in range(said)])
            last = self.last.get(e.dialogue_id, [])
            ended = bool(last) and last[-1] in self.eos and self.tok.decode(last[-1:]) == self.eot
            new.append(self.tok(text_since_reply(self.tok, msgs, said, self.eot, ended),
                                add_special_tokens=False)["input_ids"])
        sampled = self.replier.reply([self.row[episodes[i].dialogue_id] for i in live], new)
        for i, ids in zip(live, sampled):
            self.last[episodes[i].dialogue_id] = ids
            out[i] = _line(self.tok.decode(ids, skip_special_tokens=True))
        return out


class EndpointPartner:
    """The partner behind an OpenAI-compatible endpoint (cfg: ppg.config_ops.PartnerEndpointConfig),
    sampling with gen's temperature, top_p and max_new_tokens. counts: requests, retries,
    dropped."""

    def __init__(self, cfg, turns: int, gen, chat, transport=None):
        self.cfg, self.turns, self.gen, self.chat = cfg, turns, gen, chat
        self._transport = transport  # tests may pass an httpx transport
        self.counts = {"requests": 0, "retries": 0, "dropped": 0}

    def __repr__(self):  # never show the key
        return f"EndpointPartner(base_url={self.cfg.base_url!r}, model={self.cfg.model!r})"

    def identity(self) -> dict:
        return {"kind": "endpoint", "base_url": self.cfg.base_url, "model": self.cfg.model}

    def reply(self, episodes: list[Episode]) -> list[str | None | Drop]:
        live = [i for i, e in enumerate(episodes) if len(e.partner_lines()) < self.turns]
        out: list[str | None | Drop] = [None] * len(episodes)
        for i, answer in zip(live, asyncio.run(self._ask_all([episodes[i] for i in live]))):
            out[i] = answer
        return out

    async def _ask_all(self, episodes: list[Episode]) -> list[str | Drop]:
        import httpx

        from ppg.judges.endpoint import EndpointError, ask

        key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        budget = SimpleNamespace(**vars(self.cfg), max_tokens=self.gen.max_new_tokens)  # what ask reads
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(client, e):
            system, opening = self.chat(e)
            body = {"model": self.cfg.model, "messages": partner_messages(e, system, opening),
                    "max_tokens": self.gen.max_new_tokens, "temperature": self.gen.temperature,
                    "top_p": self.gen.top_p}
            try:
                a = await ask(client, sem, budget, body, headers, self.counts, who="eval.partner_endpoint",
                              error=EndpointError)
            except EndpointError as err:
                if not err.gave_up:  # a redirect or a 4xx: a wrong name or key, not a flaky server
                    raise
                return Drop(str(err), err.last)
            if a.unknown in ("other_model", "oversized"):  # a cut-off line is still a line
                return Drop(f"{a.unknown}" + (f" (answered by {a.model})" if a.model else ""), a.unknown)
            return _line(a.text)

        async with httpx.AsyncClient(base_url=self.cfg.base_url, timeout=self.cfg.timeout_s, follow_redirects=False,
                                     transport=self._transport) as client:
            answers = await asyncio.gather(*(one(client, e) for e in episodes))
        self.counts["dropped"] += sum(isinstance(a, Drop) for a in answers)
        return answers


def check_drops(dropped: dict, played: int, cfg, where: str) -> dict:
    """{played, dropped, ids, reasons} of what the partner abandoned (dropped: dialogue_id ->
    Drop); raises when more than cfg.max_drop_share of the played dialogues were dropped (the
    endpoint is down, not flaky)."""
    from collections import Counter

    reasons = dict(Counter(d.reason for d in dropped.values()))
    out = {"played": played, "dropped": len(dropped), "ids": sorted(dropped), "reasons": reasons}
    if played and len(dropped) > cfg.max_drop_share * played:
        first = next(iter(dropped.values())).why
        raise RuntimeError(f"{where}: the partner dropped {len(dropped)} of {played} dialogues, more than "
                           f"eval.partner_endpoint.max_drop_share = {cfg.max_drop_share:g} (first: {first})")
    return out
