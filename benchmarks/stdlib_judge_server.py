"""The stdlib judge server `ppg serve-judge` was before it wrapped `transformers serve`: one
generation at a time behind ThreadingHTTPServer, greedy unless asked to sample. Kept here as
benchmarks/judge_server.py's baseline, nowhere else.

    python benchmarks/stdlib_judge_server.py MODEL_DIR PORT
"""

import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_server(model_dir, host="127.0.0.1", port=8765, name="judge"):
    import torch
    from transformers import AutoModelForCausalLM

    from ppg.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # no request logging: headers may carry a key
            pass

        def _send(self, code, obj):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", ""):
                return self._send(200, {"status": "ok"})
            if self.path.rstrip("/") == "/v1/models":
                return self._send(200, {"object": "list", "data": [{"id": name, "object": "model"}]})
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                messages = req["messages"]
                max_new = int(req.get("max_tokens") or 64)
                temperature = float(req.get("temperature") or 0.0)
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"error": {"message": f"bad request: {type(e).__name__}"}})
            enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            with lock, torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new, do_sample=temperature > 0,
                                     temperature=temperature if temperature > 0 else None,
                                     pad_token_id=tok.pad_token_id)
            new = out[0, enc["input_ids"].shape[1]:]
            text = tok.decode(new, skip_special_tokens=True)
            self._send(200, {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                             "created": int(time.time()), "model": req.get("model", name),
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "finish_reason": "length" if len(new) >= max_new else "stop"}],
                             "usage": {"prompt_tokens": int(enc["input_ids"].shape[1]),
                                       "completion_tokens": int(len(new))}})

    return ThreadingHTTPServer((host, port), Handler)


if __name__ == "__main__":
    make_server(sys.argv[1], port=int(sys.argv[2])).serve_forever()
