"""A canned OpenAI-compatible chat endpoint on 127.0.0.1, for the LLM backends' tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class OpenAIStub:
    """A canned OpenAI-compatible chat endpoint on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, statuses=(200,), reply="4, 2, 9"):
        """reply: the answer text, or a function of the user message that returns it."""
        self.requests: list[dict] = []
        self.statuses = list(statuses)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                status = server.statuses.pop(0) if len(server.statuses) > 1 else server.statuses[0]
                if status == 200:
                    text = reply(body["messages"][-1]["content"]) if callable(reply) else reply
                    payload = {"id": "x", "object": "chat.completion", "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": f"  {text}\n"}}]}
                else:
                    payload = {"error": {"message": f"status {status}"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
