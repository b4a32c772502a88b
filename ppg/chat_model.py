"""The registered policy as an OpenAI-style chat model (MLflow's ChatModel: the chat signature of
`mlflow models serve`'s /invocations, which also answers a plain {"messages": [...]}).

The persona goes in as the system message, the dialogue so far as user/assistant messages, as
the pipeline's rollouts put them (ppg.rollout). `max_tokens`, `temperature` (0 = greedy), `top_p`
and `stop` are honoured; defaults come from the model_config logged with the model. With
PPG_REQUEST_LOG set to a folder, every answered request is appended to
<folder>/requests-<UTC date>.jsonl as a dialogue in the canonical format (reward null: not yet
judged), named by PPG_MODEL_VERSION, which is what `ppg monitor --logs <folder>` reads (record by
record, each file from where its last check stopped). One file per day.

Logged as code (MLflow's models-from-code): this file is copied into the registered model and
imports nothing from ppg, so `models:/ppg-<domain>@champion` loads and serves without this
package installed.
"""

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import mlflow
from mlflow.pyfunc import ChatModel
from mlflow.types.llm import ChatChoice, ChatCompletionResponse, ChatMessage, TokenUsageStats


class PersonaChat(ChatModel):
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

    def predict(self, context, messages: list[ChatMessage], params):
        msgs = [{"role": m.role, "content": m.content or ""} for m in messages]
        ids = self.tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)["input_ids"]
        budget = params.max_tokens or self.max_new_tokens
        greedy = not params.temperature  # OpenAI's 0 = the most likely reply
        kwargs = {} if greedy else {"temperature": params.temperature, "top_p": params.top_p or 1.0,
                                    "top_k": params.top_k or 0}
        with self.torch.no_grad():
            out = self.model.generate(ids, attention_mask=self.torch.ones_like(ids), max_new_tokens=budget,
                                      do_sample=not greedy, eos_token_id=sorted(self.end) or None,
                                      pad_token_id=self.tok.pad_token_id or self.tok.eos_token_id,
                                      stop_strings=params.stop or None, tokenizer=self.tok, **kwargs)
        new = out[0, ids.shape[1]:].tolist()
        ended = bool(new) and new[-1] in self.end
        text = self.tok.decode(new, skip_special_tokens=True).strip()
        for s in params.stop or []:  # OpenAI leaves the stop sequence out of the reply
            text = text.split(s)[0] if s in text else text
        finish = "stop" if ended or len(new) < budget else "length"
        answer = ChatCompletionResponse(
            id=f"chatcmpl-{uuid.uuid4().hex}", model=os.environ.get("PPG_MODEL_VERSION", ""),
            choices=[ChatChoice(index=0, message=ChatMessage(role="assistant", content=text), finish_reason=finish)],
            usage=TokenUsageStats(prompt_tokens=ids.shape[1], completion_tokens=len(new),
                                  total_tokens=ids.shape[1] + len(new)))
        self.log_request(msgs, text, answer.id, params)
        return answer

    def log_request(self, msgs, reply, request_id, params):
        folder = os.environ.get("PPG_REQUEST_LOG")
        if not folder:
            return
        persona = "\n".join(m["content"] for m in msgs if m["role"] == "system")
        lines = [{"speaker": m["role"], "text": m["content"], "reward": None} for m in msgs if m["role"] != "system"]
        lines.append({"speaker": "assistant", "text": reply, "reward": None})
        # A request carries its whole conversation, so each record is a prefix of the next one of
        # that conversation (meta.conversation: its persona and first user message, hashed); a
        # reader keeps the longest record of each.
        first = next((m["content"] for m in msgs if m["role"] == "user"), "")
        conv = hashlib.sha256(f"{persona}\0{first}".encode()).hexdigest()[:16]
        record = {"dialogue_id": f"served-{request_id.removeprefix('chatcmpl-')}", "domain": self.domain,
                  "source": "ppg-serve-model",
                  "personas": {"assistant": persona}, "evaluated_speakers": ["assistant"], "lines": lines,
                  "meta": {"model_version": os.environ.get("PPG_MODEL_VERSION", ""), "request_id": request_id,
                           "conversation": conv, "time": time.time(),
                           "params": {"max_tokens": params.max_tokens, "temperature": params.temperature}}}
        Path(folder).mkdir(parents=True, exist_ok=True)
        day = time.strftime("%Y-%m-%d", time.gmtime(record["meta"]["time"]))
        with open(Path(folder) / f"requests-{day}.jsonl", "a") as f:  # one write per line: appends stay whole
            f.write(json.dumps(record) + "\n")


mlflow.models.set_model(PersonaChat())
