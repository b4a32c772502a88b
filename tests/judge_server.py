"""A stand-in for a remote LLM-judge endpoint (OpenAI-compatible chat completions over real
HTTP on localhost) that records the Authorization headers it receives and can go down."""

import json


def send_json(handler, body: dict, status: int = 200) -> None:
    """Answer an http.server request with a JSON body."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.end_headers()
    handler.wfile.write(json.dumps(body).encode())


class FlakyJudge:
    """An OpenAI-compatible judge that answers `healthy` requests (reporting token usage), then
    fails every one (500); it keeps every request body and Authorization header. A prompt-to-line
    question whose line holds `contradicts` is answered YES (contradicts), every other NO."""

    def __init__(self, healthy: int, contradicts: str | None = None):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        state = {"n": 0, "auth": [], "bodies": []}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                state["n"] += 1
                state["auth"].append(self.headers.get("Authorization"))
                state["bodies"].append(body)
                if state["n"] > healthy:
                    self.send_response(500)
                    self.end_headers()
                    return
                line = body.split("Line spoken by", 1)[-1]  # the judged line, not the backstory
                if "Python list" in body:
                    text = "Reasoning. []"
                elif contradicts and contradicts in line:
                    text = "It contradicts the background. YES"
                else:
                    text = "It fits. NO"
                send_json(self, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                                 "usage": {"prompt_tokens": len(body) // 4, "completion_tokens": 3}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.state = state
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
