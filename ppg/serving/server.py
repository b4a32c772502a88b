"""`ppg serve-model`: the champion for OpenAI clients. POST /v1/chat/completions (the persona as
the system message), GET /v1/models and GET /health, and nothing else: no admin route, so no
client can load another model or reset the server.

Every field of a request is checked before it reaches the model, and a bad one is answered 4xx
in OpenAI's error shape naming the field, with the server up after it: a body over
max_body_bytes (413), a prompt over max_prompt_tokens, a max_tokens above max_tokens_cap (both
refused, never run for minutes), a chat and max_tokens beyond the model's context, a role other
than system/user/assistant, a chat its template refuses, a temperature outside
[0, 2] (below 1e-3 it decodes greedily), a seed outside [0, 2^63), streaming or n > 1 (not
offered). Sampling is per request (ppg.serving.engine). With a
request log folder, every answered chat is appended to requests-<UTC date>.jsonl as a dialogue in
the canonical format naming meta.model_version (ppg.chat_model.request_record; what `ppg
monitor --logs` reads), written by this front layer once the answer is computed and before it
is returned: an answered chat is a logged one.
"""

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ppg.serving.engine import BatchEngine, Sampling

ROLES = ("system", "user", "assistant")
UNSUPPORTED = ("tools", "functions", "tool_choice", "logprobs", "top_logprobs", "response_format", "logit_bias")


@dataclass
class Limits:
    max_tokens_cap: int = 512
    """The largest max_tokens a request may ask for (a larger one is refused with 400)."""
    default_max_tokens: int = 64
    """max_tokens when a request gives none (the registered model's own max_new_tokens)."""
    max_prompt_tokens: int = 4096
    """The longest chat, in tokens of the chat template, a request may send."""
    max_body_bytes: int = 1 << 20
    """The largest request body read (413 beyond it: a 2 MB message is refused, not tokenized)."""
    max_batch: int = 16
    """Chats decoded together; more wait in order of arrival."""
    max_waiting: int = 256
    """Requests queued beyond those decoding; more are answered 503 with Retry-After."""


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def _number(body, key, lo, hi, default, integer=False):
    x = body.get(key, default)
    if x is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(x, bool) or not isinstance(x, kinds) or not lo <= x <= hi:
        what = "an integer" if integer else "a number"
        raise BadRequest(f"{key}: expected {what} in [{lo}, {hi}], got {json.dumps(x)[:40]}", key)
    return x


def read_request(body, names: set[str], limits: Limits) -> tuple[list[dict], Sampling]:
    """(messages, sampling) of a chat-completions body, or BadRequest naming the field."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise BadRequest("model: expected a string", "model")
    if body.get("model") is not None and body["model"] not in names:
        raise BadRequest(f"model: {str(body['model'])[:80]!r} is not served here (GET /v1/models: "
                         f"{', '.join(sorted(names))})", "model", 404, "model_not_found")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages: required, a non-empty list of {role, content}", "messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            role = m.get("role") if isinstance(m, dict) else None
            raise BadRequest(f"messages[{i}].role: {str(role)[:20]!r} is not supported; this model takes "
                             f"{', '.join(ROLES)} messages (no tools)", f"messages[{i}].role")
        content = m.get("content")
        if isinstance(content, list):  # OpenAI's content parts: text only
            if not all(isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                       for c in content):
                raise BadRequest(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str):
            raise BadRequest(f"messages[{i}].content: expected a string", f"messages[{i}].content")
        out.append({"role": m["role"], "content": content})
    if out[-1]["role"] == "assistant":
        raise BadRequest("messages: the last message must be the user's (or the system's), not the assistant's",
                         "messages")
    for key in UNSUPPORTED:
        if body.get(key):
            raise BadRequest(f"{key}: not supported by this server", key)
    if body.get("stream"):
        raise BadRequest("stream: streaming is not supported; send stream: false", "stream")
    _number(body, "n", 1, 1, 1, integer=True)
    for key in ("presence_penalty", "frequency_penalty"):
        _number(body, key, 0, 0, 0)
    cap_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    x = body.get(cap_key)
    if x is not None and (isinstance(x, bool) or not isinstance(x, int) or x < 1):
        raise BadRequest(f"{cap_key}: expected a positive integer, got {json.dumps(x)[:40]}", cap_key)
    if x is not None and x > limits.max_tokens_cap:
        raise BadRequest(f"{cap_key}: {x} is above this server's cap of {limits.max_tokens_cap} tokens", cap_key)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4
                                 and all(isinstance(s, str) and s for s in stop)):
        raise BadRequest("stop: expected a non-empty string or a list of up to 4 of them", "stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63):
        raise BadRequest("seed: expected an integer in [0, 2^63)", "seed")
    return out, Sampling(max_tokens=x or limits.default_max_tokens,
                         temperature=float(_number(body, "temperature", 0, 2, 1.0)),
                         top_p=float(_number(body, "top_p", 0, 1, 1.0)) or 1e-9, stop=stop or [],
                         seed=seed)


def error(e: BadRequest):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": str(e), "type": "invalid_request_error", "param": e.param,
                                   "code": e.code}}, status_code=e.status)


async def read_body(request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the body is {int(declared)} bytes, over this server's {limit}", status=413)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise BadRequest(f"the body is over this server's {limit} bytes", status=413)
    return bytes(raw)


def make_app(model, tok, name: str, version: str, domain: str = "", limits: Limits = Limits(),
             request_log: Path | None = None):
    """The FastAPI app serving `model` as NAME (version VERSION) with continuous batching."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from ppg.chat_model import request_record, write_record
    from ppg.data.schema import as_text
    from ppg.generation import end_ids

    engine = BatchEngine(model, tok, end_ids(model, tok), limits.max_batch)
    context = getattr(model.config, "max_position_embeddings", None)  # positions past it are not trained
    names = {name, f"{name}/{version}"}
    app = FastAPI(title=f"ppg serve-model {name}/{version}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    log_lock = asyncio.Lock()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": f"{name}/{version}"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "ppg",
                                            "version": version}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            raw = await read_body(request, limits.max_body_bytes)
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser goes
                raise BadRequest("the body is not JSON (or nested too deeply)") from None
            msgs, sampling = read_request(body, names, limits)
            try:
                ids = list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                                   return_dict=True)["input_ids"])
            except Exception as e:  # e.g. a template that takes no system message, or roles out of turn
                raise BadRequest(f"messages: the model's chat template refuses them ({str(e)[:200]})",
                                 "messages") from None
            if len(ids) > limits.max_prompt_tokens:
                raise BadRequest(f"messages: the chat is {len(ids)} tokens, over this server's "
                                 f"{limits.max_prompt_tokens}", "messages")
            if context and len(ids) + sampling.max_tokens > context:
                raise BadRequest(f"messages: the chat's {len(ids)} tokens and the {sampling.max_tokens} to "
                                 f"generate exceed the model's context of {context} tokens", "messages")
        except BadRequest as e:
            return error(e)
        if engine.waiting.qsize() >= limits.max_waiting:
            return JSONResponse({"error": {"message": "the server is busy; retry", "type": "server_busy"}},
                                status_code=503, headers={"Retry-After": "1"})
        try:
            done = await asyncio.wrap_future(engine.submit(ids, sampling))
        except Exception as e:  # the model failed on this chat: a 500 that says so, the server goes on
            return JSONResponse({"error": {"message": f"the model failed on this request: {type(e).__name__}: "
                                                      f"{str(e)[:300]}", "type": "server_error"}}, status_code=500)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        answer = {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": name,
                  "system_fingerprint": f"{name}/{version}",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                               "finish_reason": done.finish_reason}],
                  "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": len(done.ids),
                            "total_tokens": done.prompt_tokens + len(done.ids)}}
        if request_log is not None:
            # control characters a model emits become U+FFFD, as in rollouts: the canonical format refuses them
            record = request_record(msgs, as_text(done.text), rid, {"max_tokens": sampling.max_tokens,
                                                           "temperature": sampling.temperature},
                                    domain, f"{name}/{version}")
            async with log_lock:  # one appended line per record, in the order answered
                write_record(request_log, record)
        return answer

    return app
