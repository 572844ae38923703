"""A small HTTP server on 127.0.0.1 that stands in for the real LLM servers in tests.

It speaks the two wire formats picovlm uses, as Ollama and OpenAI-compatible servers (llama.cpp, vLLM)
do: POST /api/chat (reply JSON, or NDJSON lines when "stream": true) and POST /v1/chat/completions
(reply JSON, or server-sent events ending in `data: [DONE]`). Unknown models get 404 like Ollama's
"model not found". It also fails on demand (HTTP 500 for the next N requests), answers slowly (to test
timeouts), and records every request it served, so tests can count them.

The "model" paraphrases deterministically, by seed, so every filter of `picovlm augment` sees work:
    seed % 5 == 0  sentences reversed, with a lead-in          (a good paraphrase)
    seed % 5 == 1  a number added                              (dropped: number)
    seed % 5 == 2  the text unchanged                          (dropped: same_as_original)
    seed % 5 == 3  sentences rotated, with another lead-in     (good, or a duplicate of seed 0)
    seed % 5 == 4  the first word only                         (dropped: too_short)

Run it alone with `python tests/grow/fake_llm_server.py` (prints its free port when ready).
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def fake_paraphrase(prompt: str, seed: int) -> str:
    text = prompt.rsplit("\n\n", 1)[-1].strip()  # the templates end with "\n\n{text}"
    sentences = re.split(r"(?<=[.!?])\s+", text)
    mode = seed % 5
    if mode == 0:
        return "To put it another way: " + " ".join(reversed(sentences))
    if mode == 1:
        return text + " It happened 42 times."
    if mode == 2:
        return text
    if mode == 3:
        rotated = sentences[1:] + sentences[:1]
        return "Put differently, here it is. " + " ".join(rotated)
    return text.split()[0]


class FakeLLMServer:
    def __init__(self, models=("fake-model",), delay: float = 0.0, chunk_delay: float = 0.0):
        self.models = set(models)
        self.delay = delay  # seconds before the reply starts
        self.chunk_delay = chunk_delay  # seconds between streamed chunks (a stall mid-reply)
        self.fail_next = 0  # answer HTTP 500 to this many requests
        self.requests: list[dict] = []  # every request served: {"path", "model", "prompt", "seed"}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _send(self, handler, status: int, payload: bytes | list[bytes], content_type="application/json"):
        chunks = payload if isinstance(payload, list) else [payload]
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(sum(len(c) for c in chunks)))
        handler.end_headers()
        try:
            for i, chunk in enumerate(chunks):
                if i:
                    time.sleep(self.chunk_delay)
                handler.wfile.write(chunk)
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            pass

    def handle(self, handler, body: dict):
        ollama = handler.path == "/api/chat"
        if handler.path not in ("/api/chat", "/v1/chat/completions"):
            return self._send(handler, 404, b'{"error": "404 page not found"}')
        if body["model"] not in self.models:
            error = f"model '{body['model']}' not found"
            payload = {"error": error} if ollama else {"error": {"message": error, "code": "model_not_found"}}
            return self._send(handler, 404, json.dumps(payload).encode())
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return self._send(handler, 500, b'{"error": "internal error"}')
        seed = body["options"].get("seed", 0) if ollama else body.get("seed", 0)
        prompt = body["messages"][-1]["content"]
        with self.lock:  # counted on arrival, so a request whose client dies mid-wait still counts
            self.requests.append(
                {"path": handler.path, "model": body["model"], "prompt": prompt, "seed": seed}
            )
        time.sleep(self.delay)
        reply = fake_paraphrase(prompt, seed)
        if not body.get("stream"):
            if ollama:
                payload = {
                    "model": body["model"],
                    "message": {"role": "assistant", "content": reply},
                    "done": True,
                }
            else:
                payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}
            return self._send(handler, 200, json.dumps(payload).encode())
        # streamed: the reply in pieces of a few characters
        pieces = [reply[i : i + 7] for i in range(0, len(reply), 7)]
        if ollama:
            lines = [json.dumps({"message": {"content": p}, "done": False}) for p in pieces]
            lines.append(json.dumps({"message": {"content": ""}, "done": True}))
            return self._send(
                handler, 200, [(line + "\n").encode() for line in lines], "application/x-ndjson"
            )
        events = [json.dumps({"choices": [{"index": 0, "delta": {"content": p}}]}) for p in pieces]
        stream = [f"data: {e}\n\n".encode() for e in events] + [b": keep-alive\n\ndata: [DONE]\n\n"]
        return self._send(handler, 200, stream, "text/event-stream")


if __name__ == "__main__":
    with FakeLLMServer() as fake:
        print(fake.port, flush=True)
        fake.thread.join()
