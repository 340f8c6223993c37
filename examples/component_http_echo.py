#!/usr/bin/env python3
"""An echo bot for Prosody's mod_component_http (JSON in: to, from, kind, body, stanza; JSON out: body, or
a whole `stanza`); it runs unchanged behind stanzad's webhook routes with format = "json":

    [[route]]
    name = "component-http"
    webhook = "http://127.0.0.1:5001/"
    format = "json"
    hmac_secret = "…"          # optional; then set STANZAD_HMAC_SECRET for the app too

Standard library only. Run: python3 examples/component_http_echo.py [PORT]
"""
import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ.get("STANZAD_HMAC_SECRET", "").encode()


def signed(raw: bytes, header: str) -> bool:
    """The 5-line check: HMAC-SHA256 of the raw body, compared in constant time."""
    expected = "sha256=" + hmac.new(SECRET, raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


class Echo(BaseHTTPRequestHandler):
    def do_POST(self):
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if SECRET and not signed(raw, self.headers.get("Stanzad-Signature")):
            self.send_response(401)
            self.end_headers()
            return
        data = json.loads(raw)
        if data.get("kind") == "message" and data.get("body"):
            answer = json.dumps({"body": data["body"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
        else:
            self.send_response(204)
            self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5001
    ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()
