"""LLMJudge: consistency verdicts from any OpenAI-compatible chat-completions endpoint (vLLM,
Ollama, TGI, OpenAI, or `ppg serve-judge`).

Prompt-to-line: does the line contradict the speaker's backstory? The answer must name exactly
one of the standalone verdict words YES/NO (YES = contradicts -> 0, NO -> 1). Line-to-line: which
earlier lines of the same speaker does it contradict? The last bracketed list of plain integers,
each the index of a line the judge was shown. Anything else is no verdict: null and counted by
reason (`unknown.no_verdict`, `both_words`, `malformed_list`, `unshown_index`, and the endpoint's
own `cut_off`, `other_model`, `oversized`: ppg.judges.endpoint), never read as 0 or 1. Who
answered is recorded in each verdict's `judge.by.answered_by`. Transport faults are retried, then
raise JudgeError (ppg.judges.endpoint). The API key is read from the environment variable named
in the config and appears in no message, log line or result. With a VerdictCache, an answer
already given for the same model, budget and prompt is reused, and every new one is stored as it
arrives. The config is the judge section of params.yaml (ppg.config_ops.JudgeConfig).
"""

import asyncio
import hashlib
import os
import re
import sys

from ppg.data.formats import INT_LIST, VERDICT
from ppg.data.schema import Dialogue
from ppg.judges.base import both_hold
from ppg.judges.endpoint import Answer, JudgeError, ask
from ppg.judges.kinds import endpoint

__all__ = ["LLMJudge", "JudgeError", "read_verdict", "read_conflicts"]

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
def read_verdict(text: str | None) -> tuple[float | None, str | None]:
    """(YES -> 0.0 / NO -> 1.0, None), or (None, why): no_verdict when the answer names neither
    standalone word, both_words when it names both (which one it meant is a guess)."""
    found = set(VERDICT.findall(text or ""))
    if len(found) != 1:
        return None, "no_verdict" if not found else "both_words"
    return (0.0 if found == {"YES"} else 1.0), None


def read_conflicts(text: str | None, shown: set[int]) -> tuple[list[int] | None, str | None]:
    """(the indices of the last bracketed integer list, None), or (None, why): no_verdict without
    a list, malformed_list for an entry that is not a plain index (a sign, a leading zero),
    unshown_index for an index the judge was not shown."""
    found = INT_LIST.findall(text or "")
    if not found:
        return None, "no_verdict"
    items = [x.strip() for x in found[-1].strip("[]").split(",") if x.strip()]
    if not all(re.fullmatch(r"0|[1-9][0-9]*", x) for x in items):
        return None, "malformed_list"
    idx = [int(x) for x in items]
    return (idx, None) if set(idx) <= shown else (None, "unshown_index")


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
        prompts = hashlib.sha256("\0".join((PROMPT_TO_LINE, LINE_TO_LINE)).encode()).hexdigest()[:16]
        return {"kind": "llm", "model": self.cfg.model, "base_url": endpoint(self.cfg.base_url), "prompts": prompts,
                "require": self.cfg.require}

    async def _complete(self, client, sem, prompt: str) -> Answer:
        cache = self.cache
        key = cache.key(self.cfg.model, self.cfg.max_tokens, prompt) if cache is not None else None
        answer = cache.get(key) if cache is not None else None
        if answer is not None:
            self.counts["cache_hits"] += 1
        else:
            api_key = os.environ.get(self.cfg.api_key_env, "")
            body = {"model": self.cfg.model, "messages": [{"role": "user", "content": prompt}],
                    "temperature": 0.0, "max_tokens": self.cfg.max_tokens}
            answer = await ask(client, sem, self.cfg, body, {"Authorization": f"Bearer {api_key}"} if api_key else {},
                               self.counts)
            self.counts["tokens_in"] += answer.tokens_in or 0
            self.counts["tokens_out"] += answer.tokens_out or 0
            if cache is not None and answer.unknown in (None, "cut_off"):  # what the asked model said, bounded
                cache.put(key, answer)
        if self._bar is not None:
            self._bar.update(1)
        return answer

    def _unknown(self, why: str | None):
        if why:
            self.counts[f"unknown.{why}"] = self.counts.get(f"unknown.{why}", 0) + 1

    async def _judge(self, dialogues: list[Dialogue]) -> list[Dialogue]:
        import httpx

        sem = asyncio.Semaphore(self.cfg.concurrency)
        out = [d.model_copy(deep=True) for d in dialogues]
        jobs = []
        async with httpx.AsyncClient(base_url=self.cfg.base_url, timeout=self.cfg.timeout_s, follow_redirects=False,
                                     transport=self._transport) as client:
            for d in out:
                for s in d.evaluated_speakers:
                    history, shown = [], []  # the earlier lines the judge sees, and their indices
                    for i, ln in enumerate(d.lines):
                        if ln.speaker != s:
                            continue
                        if self.keep_logged and ln.reward is not None:
                            self.counts["kept_turns"] += 1
                            history.append(f"[{i}] {ln.text}")
                            shown.append(i)
                            continue
                        p2l = PROMPT_TO_LINE.format(role=s, backstory=d.personas[s], line=ln.text)
                        l2l = LINE_TO_LINE.format(role=s, history="\n".join(history), line=ln.text) if history else None
                        jobs.append((ln, self._complete(client, sem, p2l),
                                     self._complete(client, sem, l2l) if l2l else None, set(shown)))
                        history.append(f"[{i}] {ln.text}")
                        shown.append(i)
            if self.progress and jobs:
                from tqdm import tqdm

                self._bar = tqdm(total=sum(1 + (b is not None) for _, _, b, _ in jobs), desc="judge",
                                 unit="prompt", file=sys.stderr)
            try:
                answers = await asyncio.gather(*(asyncio.gather(a, b) if b else a for _, a, b, _ in jobs))
            finally:
                if self._bar is not None:
                    self._bar.close()
                    self._bar = None
        who = self.identity()
        for (ln, _, has_l2l, shown), ans in zip(jobs, answers):
            p_ans, l_ans = ans if has_l2l else (ans, None)
            verdict, p_why = (None, p_ans.unknown) if p_ans.unknown else read_verdict(p_ans.text)
            conflicts, l_why = [], None  # a first turn has no earlier line to contradict
            if l_ans is not None:
                conflicts, l_why = (None, l_ans.unknown) if l_ans.unknown else read_conflicts(l_ans.text, shown)
            self._unknown(p_why)
            self._unknown(l_why)
            self.counts["null_prompt_to_line"] += verdict is None
            self.counts["null_line_to_line"] += conflicts is None
            answered = sorted({a.model for a in (p_ans, l_ans) if a is not None and a.model})
            ln.judge = {"prompt_to_line": p_ans.text, "line_to_line": conflicts,
                        "line_to_line_text": l_ans.text if l_ans else None,
                        "persona": None if verdict is None else int(verdict),
                        "commitment": None if conflicts is None else int(not conflicts),
                        "unknown": [w for w in (p_why, l_why) if w] or None, "by": {**who, "answered_by": answered}}
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
