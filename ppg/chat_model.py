"""The registered policy as a chat model: a plain MLflow PythonModel whose signature is the
OpenAI-style chat schema (mlflow.types.llm's), so `mlflow models serve`'s /invocations answers
{"messages": [...], "max_tokens": N, "temperature": T, "top_p": P, "stop": [...]} with a chat
completion, as the ChatModel of earlier versions did (deprecated since MLflow 3.0; versions
registered with it still load: ppg.registry.load_registered reads the same `hf` artifact).

The persona goes in as the system message, the dialogue so far as user/assistant messages, as
the pipeline's rollouts put them (ppg.rollout). `max_tokens`, `temperature` (0 = greedy), `top_p`
and `stop` are honoured; defaults come from the model_config logged with the model. With
PPG_REQUEST_LOG set to a folder, every answered request is appended to
<folder>/requests-<UTC date>.jsonl as a dialogue in the canonical format (reward null: not yet
judged), named by PPG_MODEL_VERSION, which is what `ppg monitor --logs <folder>` reads (record by
record, each file from where its last check stopped). One file per day. (`ppg serve-model`, the
batching server for OpenAI clients, writes the same records: request_record.)

Logged as code (MLflow's models-from-code): this file is copied into the registered model and
imports nothing from ppg, so `models:/ppg-<domain>@champion` loads and serves without this
package installed.
"""

import hashlib
import json
import os
import time
import uuid
import warnings
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


def request_record(msgs: list[dict], reply: str, request_id: str, params: dict, domain: str, version: str) -> dict:
    """An answered chat as a canonical dialogue (reward null: not yet judged). A request carries
    its whole conversation, so each record is a prefix of the next one of that conversation
    (meta.conversation: its persona and first user message, hashed); a reader keeps the longest
    record of each."""
    persona = "\n".join(m["content"] for m in msgs if m["role"] == "system")
    lines = [{"speaker": m["role"], "text": m["content"], "reward": None} for m in msgs if m["role"] != "system"]
    lines.append({"speaker": "assistant", "text": reply, "reward": None})
    first = next((m["content"] for m in msgs if m["role"] == "user"), "")
    conv = hashlib.sha256(f"{persona}\0{first}".encode()).hexdigest()[:16]
    return {"dialogue_id": f"served-{request_id.removeprefix('chatcmpl-')}", "domain": domain,
            "source": "ppg-serve-model", "personas": {"assistant": persona}, "evaluated_speakers": ["assistant"],
            "lines": lines, "meta": {"model_version": version, "request_id": request_id, "conversation": conv,
                                     "time": time.time(), "params": params}}


def write_record(folder: Path, record: dict) -> None:
    """Append a record to folder/requests-<UTC date of its time>.jsonl (one file per day)."""
    folder.mkdir(parents=True, exist_ok=True)
    day = time.strftime("%Y-%m-%d", time.gmtime(record["meta"]["time"]))
    with open(folder / f"requests-{day}.jsonl", "a") as f:  # one write per line: appends stay whole
        f.write(json.dumps(record) + "\n")


def _rows(model_input) -> list[dict]:
    """The requests of a predict call: a DataFrame (what /invocations and the signature give),
    a dict of one request, or a list of them."""
    if hasattr(model_input, "to_dict"):
        return model_input.to_dict(orient="records")
    return [model_input] if isinstance(model_input, dict) else list(model_input)


def _given(x):
    """A request field's value, None when absent (a DataFrame cell of a missing field is NaN)."""
    return None if x is None or (isinstance(x, float) and x != x) else x


class PersonaChat(PythonModel):
    def load_context(self, context):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf = context.artifacts["hf"]
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(hf).eval()
        self.tok = AutoTokenizer.from_pretrained(hf)
        config = context.model_config or {}
        self.max_new_tokens = int(config.get("max_new_tokens", 64))
        self.domain = config.get("domain", "")
        eos = self.model.generation_config.eos_token_id
        self.end = {*(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []),
                    *([self.tok.eos_token_id] if self.tok.eos_token_id is not None else [])}

    def predict(self, context, model_input, params=None):
        answers = [self.answer(r) for r in _rows(model_input)]
        return answers[0] if len(answers) == 1 else answers

    def answer(self, request: dict) -> dict:
        msgs = [{"role": m["role"], "content": m.get("content") or ""} for m in request["messages"]]
        ids = self.tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
        budget = int(_given(request.get("max_tokens")) or self.max_new_tokens)
        temperature = _given(request.get("temperature"))
        top_p = _given(request.get("top_p"))
        stop = [s for s in (_given(request.get("stop")) or [])]
        greedy = not temperature  # OpenAI's 0 = the most likely reply
        kwargs = {} if greedy else {"temperature": float(temperature), "top_p": float(top_p or 1.0), "top_k": 0}
        with self.torch.no_grad():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=budget,
                                      do_sample=not greedy, eos_token_id=sorted(self.end) or None,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id,
                                      stop_strings=stop or None, tokenizer=self.tok, **kwargs)
        new = out[0, ids.shape[1]:].tolist()
        ended = bool(new) and new[-1] in self.end
        text = self.tok.decode(new, skip_special_tokens=True).strip()
        for s in stop:  # OpenAI leaves the stop sequence out of the reply
            text = text.split(s)[0] if s in text else text
        finish = "stop" if ended or len(new) < budget else "length"
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        version = os.environ.get("PPG_MODEL_VERSION", "")
        folder = os.environ.get("PPG_REQUEST_LOG")
        if folder:
            write_record(Path(folder), request_record(msgs, text, rid, {"max_tokens": _given(request.get("max_tokens")),
                                                                         "temperature": temperature},
                                                      self.domain, version))
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": version,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": ids.shape[1], "completion_tokens": len(new),
                          "total_tokens": ids.shape[1] + len(new)}}


with warnings.catch_warnings():  # the signature is given at logging (the chat schema), not by type hints
    warnings.filterwarnings("ignore", message=".*type hints to the `predict`")
    mlflow.models.set_model(PersonaChat())
