"""A programmable local HTTP server for webhook tests: records every request and answers from a script
keyed by the last path segment."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorded:
    def __init__(self, path: str, headers: dict[str, str], body: bytes):
        self.path = path
        self.headers = headers
        self.body = body


class WebhookServer:
    """`script[key]` is a list of responses (status, headers, body, delay) used in turn; the last repeats."""

    def __init__(self):
        self.script: dict[str, list[tuple[int, dict[str, str], bytes, float]]] = {}
        self.requests: list[Recorded] = []
        self.lock = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.path.rstrip("/").rsplit("/", 1)[-1].split("%40")[0].split("@")[0]
                with server.lock:
                    server.requests.append(Recorded(self.path, {k: v for k, v in self.headers.items()}, body))
                    seen = sum(1 for r in server.requests if r.path == self.path)
                    plan = server.script.get(key, [(404, {}, b"", 0.0)])
                    server.lock.notify_all()
                status, headers, payload, delay = plan[min(seen, len(plan)) - 1]
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, key: str, *responses) -> None:
        """Each response: (status, content_type or None, body, delay=0)."""
        plan = []
        for response in responses:
            status, content_type, body, *rest = response
            headers = {"Content-Type": content_type} if content_type else {}
            if isinstance(status, tuple):
                status, extra = status
                headers.update(extra)
            plan.append((status, headers, body.encode() if isinstance(body, str) else body, rest[0] if rest else 0.0))
        with self.lock:
            self.script[key] = plan

    def requests_for(self, key: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.path.rstrip("/").rsplit("/", 1)[-1].split("%40")[0] == key]

    def stop(self) -> None:
        self.httpd.shutdown()
