"""LLMJudge: consistency verdicts from any OpenAI-compatible chat-completions endpoint (vLLM,
Ollama, TGI, OpenAI, or `ppg serve-judge`).

Prompt-to-line: does the line contradict the speaker's backstory? The verdict is the LAST
standalone YES/NO of the answer (YES = contradicts -> 0, NO -> 1). Line-to-line: which earlier
lines of the same speaker does it contradict? The last bracketed list of integers. An answer
without a verdict is null and counted, never read as 0 or 1. Transport faults (timeouts,
connection errors, HTTP 429/5xx, a body that is not a chat completion) are retried with
exponential backoff, then raise JudgeError. The API key is read from the environment variable
named in the config and appears in no message, log line or result. With a VerdictCache, an answer
already given for the same model, budget and prompt is reused, and every new one is stored as it
arrives. The config is the judge section of params.yaml (ppg.config_ops.JudgeConfig).
"""

import asyncio
import hashlib
import os
import random
import sys

from ppg.data.importers import conflict_list, prompt_verdict
from ppg.data.schema import Dialogue
from ppg.judges.base import both_hold

PROMPT_TO_LINE = (
    "You check whether a character stays consistent with their background.\n"
    "Background of {role}: {backstory}\n"
    "Line spoken by {role}: {line}\n"
    "Does the line directly contradict the background (facts, behaviour, beliefs)? New details that "
    "plausibly fit the background are not contradictions. Give one sentence of reasoning, then end "
    "with exactly one word: YES if it contradicts the background, NO if it does not.")
LINE_TO_LINE = (
    "Earlier lines of {role} in a conversation, with their indices:\n{history}\n"
    "New line spoken by {role}: {line}\n"
    "Which earlier lines does the new line clearly contradict? Give one sentence of reasoning, then "
    "a Python list of the conflicting indices, for example [2, 5], or [] if there is none.")
QA = (
    "Background of {role}: {backstory}\n"
    "Question about {role}: {question}\n"
    "Answer given by {role}: {answer}\n"
    "Is the answer consistent with the background? End with exactly one word: YES if it is "
    "consistent, NO if it is not.")


class JudgeError(RuntimeError):
    """The endpoint failed after every retry."""


class LLMJudge:
    """cfg: ppg.config_ops.JudgeConfig (its endpoint fields). keep_logged: leave a line whose
    reward is already known as it is (the judge stage, unless judge.overwrite); the line still
    counts as history for the line-to-line question of later lines."""

    def __init__(self, cfg, transport=None, cache=None, keep_logged: bool = False, progress: bool = False):
        self.cfg, self.cache, self.keep_logged, self.progress = cfg, cache, keep_logged, progress
        self._transport = transport  # tests may pass an httpx transport
        self._bar = None
        self.counts = {"requests": 0, "retries": 0, "cache_hits": 0, "judged_turns": 0, "kept_turns": 0,
                       "null_prompt_to_line": 0, "null_line_to_line": 0, "tokens_in": 0, "tokens_out": 0}

    def __repr__(self):  # never show the key
        return f"LLMJudge(base_url={self.cfg.base_url!r}, model={self.cfg.model!r})"

    def identity(self) -> dict:
        prompts = hashlib.sha256("\0".join((PROMPT_TO_LINE, LINE_TO_LINE, QA)).encode()).hexdigest()[:16]
        return {"kind": "llm", "model": self.cfg.model, "prompts": prompts, "require": self.cfg.require}

    async def _complete(self, client, sem, prompt: str) -> str:
        cache = self.cache
        key = cache.key(self.cfg.model, self.cfg.max_tokens, prompt) if cache is not None else None
        answer = cache.get(key) if cache is not None else None
        if answer is not None:
            self.counts["cache_hits"] += 1
        else:
            answer, usage = await self._ask(client, sem, prompt)
            self.counts["tokens_in"] += usage.get("prompt_tokens") or 0
            self.counts["tokens_out"] += usage.get("completion_tokens") or 0
            if cache is not None:
                cache.put(key, self.cfg.model, answer, usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if self._bar is not None:
            self._bar.update(1)
        return answer

    async def _ask(self, client, sem, prompt: str) -> tuple[str, dict]:
        import httpx

        key = os.environ.get(self.cfg.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = {"model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": 0.0, "max_tokens": self.cfg.max_tokens}
        last = "no attempt"
        for attempt in range(self.cfg.retries + 1):
            if attempt:
                self.counts["retries"] += 1
                await asyncio.sleep(self.cfg.backoff_s * 2 ** (attempt - 1) * (1 + random.random() / 4))
            async with sem:
                self.counts["requests"] += 1
                try:
                    r = await client.post("/chat/completions", json=body, headers=headers)
                except (httpx.TimeoutException, httpx.TransportError) as e:
                    last = f"{type(e).__name__}"
                    continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}"
                continue
            if r.status_code >= 400:  # a client error will not heal by retrying
                raise JudgeError(f"judge endpoint {self.cfg.base_url}: HTTP {r.status_code} "
                                 f"(check the model name and the key in ${self.cfg.api_key_env})")
            try:
                body = r.json()
                content = body["choices"][0]["message"]["content"]
                if not isinstance(content, str):
                    raise TypeError("content is not a string")
                usage = body.get("usage")
                return content, usage if isinstance(usage, dict) else {}
            except (ValueError, KeyError, IndexError, TypeError) as e:
                last = f"not a chat completion ({type(e).__name__})"
        raise JudgeError(f"judge endpoint {self.cfg.base_url}: failed after {self.cfg.retries + 1} "
                         f"attempts (last: {last})")

    async def _judge(self, dialogues: list[Dialogue]) -> list[Dialogue]:
        import httpx

        sem = asyncio.Semaphore(self.cfg.concurrency)
        out = [d.model_copy(deep=True) for d in dialogues]
        jobs = []
        async with httpx.AsyncClient(base_url=self.cfg.base_url, timeout=self.cfg.timeout_s,
                                     transport=self._transport) as client:
            for d in out:
                for s in d.evaluated_speakers:
                    history = []
                    for i, ln in enumerate(d.lines):
                        if ln.speaker != s:
                            continue
                        if self.keep_logged and ln.reward is not None:
                            self.counts["kept_turns"] += 1
                            history.append(f"[{i}] {ln.text}")
                            continue
                        p2l = PROMPT_TO_LINE.format(role=s, backstory=d.personas[s], line=ln.text)
                        l2l = LINE_TO_LINE.format(role=s, history="\n".join(history), line=ln.text) if history else None
                        jobs.append((ln, self._complete(client, sem, p2l),
                                     self._complete(client, sem, l2l) if l2l else None))
                        history.append(f"[{i}] {ln.text}")
            if self.progress and jobs:
                from tqdm import tqdm

                self._bar = tqdm(total=sum(1 + (b is not None) for _, _, b in jobs), desc="judge",
                                 unit="prompt", file=sys.stderr)
            try:
                answers = await asyncio.gather(*(asyncio.gather(a, b) if b else a for _, a, b in jobs))
            finally:
                if self._bar is not None:
                    self._bar.close()
                    self._bar = None
        who = self.identity()
        for (ln, _, has_l2l), ans in zip(jobs, answers):
            p_text, l_text = (ans if has_l2l else (ans, None))
            verdict = prompt_verdict(p_text)
            conflicts = conflict_list(l_text) if l_text is not None else []
            self.counts["null_prompt_to_line"] += verdict is None
            self.counts["null_line_to_line"] += conflicts is None
            ln.judge = {"prompt_to_line": p_text, "line_to_line": conflicts, "line_to_line_text": l_text,
                        "persona": None if verdict is None else int(verdict),
                        "commitment": None if conflicts is None else int(not conflicts), "by": who}
            ln.reward = self.reward(verdict, conflicts)
            self.counts["judged_turns"] += 1
        return out

    def reward(self, verdict: float | None, conflicts: list | None) -> float | None:
        persona = verdict
        commitment = None if conflicts is None else float(not conflicts)
        if self.cfg.require == "persona":
            return persona
        if self.cfg.require == "commitment":
            return commitment
        both = both_hold(persona, commitment)
        return None if both is None else float(both)

    def judge(self, dialogues: list[Dialogue]) -> list[Dialogue]:
        """Copies of the dialogues with every evaluated line judged (reward null where unknown)."""
        return asyncio.run(self._judge(dialogues))

    async def _qa(self, items):
        import httpx

        sem = asyncio.Semaphore(self.cfg.concurrency)
        async with httpx.AsyncClient(base_url=self.cfg.base_url, timeout=self.cfg.timeout_s,
                                     transport=self._transport) as client:
            return await asyncio.gather(*(self._complete(client, sem, QA.format(**it)) for it in items))

    def qa_consistency(self, items: list[dict]) -> list[float | None]:
        """Q&A consistency: items {role, backstory, question, answer} -> 1 (answer fits the
        backstory: YES), 0 (NO), None (no verdict, counted)."""
        out = []
        for text in asyncio.run(self._qa(items)):
            v = prompt_verdict(text)  # YES -> 0.0 there; here YES means consistent
            self.counts["null_qa"] = self.counts.get("null_qa", 0) + (v is None)
            out.append(None if v is None else 1.0 - v)
        return out
