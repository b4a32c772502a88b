"""One question to an OpenAI-compatible chat-completions endpoint, and what its answer can be
trusted for.

Only a 2xx response is an answer. A redirect is never followed (the API key goes to
judge.base_url and nowhere else) and stops the stage, as does any other 4xx: neither heals by
asking again. Timeouts, transport errors, 429 and 5xx, and a body that is not a chat completion
are retried with exponential backoff, a 429's Retry-After honoured up to
judge.retry_after_max_s; each attempt has a total deadline of judge.timeout_s (a server that
trickles its body does not hold the stage past it), and the final error says what each attempt
met. An answer is read up to a byte bound set by the answer budget: a longer one is `oversized`.

An answer is never a verdict, whatever it says, when it was cut off by the token limit
(`finish_reason: length`: `cut_off`), when another model than the one asked gave it
(`other_model`; a dated snapshot of the asked name, as OpenAI reports, is the same model), or
when it is oversized. Those reasons, and the ones the judge's reading of the text adds, are
counted per reason (counts `unknown.<reason>`), and the turn's verdict stays null.
"""

import asyncio
import email.utils
import json
import random
import re
import time
from dataclasses import dataclass


class EndpointError(RuntimeError):
    """The endpoint failed after every retry (gave_up), or answered in a way that retrying cannot
    mend (a redirect, a 4xx)."""

    def __init__(self, message: str, gave_up: bool = False, last: str = ""):
        super().__init__(message)
        self.gave_up, self.last = gave_up, last or message  # last: what the final attempt met


class JudgeError(EndpointError):
    """The judge's endpoint failed (EndpointError)."""


@dataclass
class Answer:
    text: str | None  # None when it was not read (oversized)
    model: str | None = None  # who answered: the response's `model` field (None when it names none)
    unknown: str | None = None  # why no verdict may be read from it: cut_off, other_model, oversized
    tokens_in: int | None = None
    tokens_out: int | None = None


class Oversized(Exception):
    pass


def byte_limit(max_tokens: int) -> int:
    """The most bytes read of one answer: 64 KiB of envelope plus 64 bytes per token of budget
    (a token is a few characters; JSON escapes at most sextuple them)."""
    return 65536 + 64 * max_tokens


def same_model(asked: str, answered: str | None) -> bool:
    """The asked model answered: the same name, a dated snapshot of it (gpt-4o-mini ->
    gpt-4o-mini-2024-07-18), or a response that names no model (nothing says otherwise)."""
    return answered is None or answered == asked or re.fullmatch(re.escape(asked) + r"-\d{4}-\d{2}-\d{2}",
                                                                 answered) is not None


def read_answer(raw: bytes, asked: str) -> Answer:
    """A chat completion's first choice; ValueError when the body is not one (retried). Fields
    beside the content that are malformed (a usage count given as a string) are left unknown."""
    try:
        body = json.loads(raw)
        choice = body["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"not a chat completion ({type(e).__name__})") from None
    if not isinstance(content, str) or not isinstance(choice, dict):
        raise ValueError("not a chat completion (content is not a string)")
    model = body.get("model") if isinstance(body.get("model"), str) else None
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}

    def count(key):
        v = usage.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    unknown = ("other_model" if not same_model(asked, model) else
               "cut_off" if choice.get("finish_reason") == "length" else None)
    return Answer(content, model, unknown, count("prompt_tokens"), count("completion_tokens"))


def retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or an HTTP date); None if unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


async def _post(client, body: dict, headers: dict, limit: int):
    """(status, headers, body bytes of a 2xx) of one POST, reading at most `limit` bytes."""
    async with client.stream("POST", "/chat/completions", json=body, headers=headers) as r:
        raw = bytearray()
        if 200 <= r.status_code < 300:
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise Oversized
            async for chunk in r.aiter_bytes():
                raw += chunk
                if len(raw) > limit:
                    raise Oversized
        return r.status_code, r.headers, bytes(raw)


async def ask(client, sem, cfg, body: dict, headers: dict, counts: dict, who: str = "judge",
              error=JudgeError) -> Answer:
    """The endpoint's answer to one request body (module doc: what is retried, what stops). who:
    the config section named in errors (judge, eval.partner_endpoint); error: the class raised."""
    import httpx

    limit, tried, t0, wait = byte_limit(cfg.max_tokens), [], time.monotonic(), 0.0
    for attempt in range(cfg.retries + 1):
        if attempt:
            counts["retries"] += 1
            await asyncio.sleep(wait)
        wait = cfg.backoff_s * 2 ** attempt * (1 + random.random() / 4)
        async with sem:
            counts["requests"] += 1
            try:
                async with asyncio.timeout(cfg.timeout_s):
                    status, got, raw = await _post(client, body, headers, limit)
            except TimeoutError:
                tried.append(f"no whole answer within {cfg.timeout_s:g} s")
                continue
            except httpx.HTTPError as e:
                tried.append(type(e).__name__)
                continue
            except Oversized:
                return Answer(None, unknown="oversized")
        if status == 429 or status >= 500:
            asked_wait = retry_after(got.get("retry-after"))
            tried.append(f"HTTP {status}" + (f" (Retry-After {asked_wait:.0f} s)" if asked_wait is not None else ""))
            if asked_wait is not None:
                wait = min(asked_wait, cfg.retry_after_max_s)
            continue
        if 300 <= status < 400:
            where = httpx.URL(got.get("location", "")).host or "?"
            raise error(f"{who} endpoint {cfg.base_url}: HTTP {status} redirect to host {where} not followed "
                        f"(set {who}.base_url to the endpoint itself; the API key goes nowhere else)")
        if not 200 <= status < 300:  # a client error will not heal by retrying
            raise error(f"{who} endpoint {cfg.base_url}: HTTP {status} "
                        f"(check the model name and the key in ${cfg.api_key_env})")
        try:
            return read_answer(raw, cfg.model)
        except ValueError as e:
            tried.append(str(e))
    raise error(f"{who} endpoint {cfg.base_url}: failed after {cfg.retries + 1} attempts (last: {tried[-1]}) "
                f"in {time.monotonic() - t0:.0f} s; each attempt: {'; '.join(tried)}", gave_up=True, last=tried[-1])
