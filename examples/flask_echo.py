#!/usr/bin/env python3
"""An echo bot as a Flask app, written for Prosody's mod_rest callbacks (XML in, XML out); it runs unchanged
behind stanzad's webhook routes:

    [[route]]
    name = "flask"
    webhook = "http://127.0.0.1:5000/"
    format = "xml"
    hmac_secret = "…"          # optional; then set STANZAD_HMAC_SECRET for the app too

Run: STANZAD_HMAC_SECRET=… python3 examples/flask_echo.py [PORT]
"""
import hashlib
import hmac
import os
import sys
import xml.etree.ElementTree as ET

from flask import Flask, Response, abort, request

app = Flask("echobot")
SECRET = os.environ.get("STANZAD_HMAC_SECRET", "").encode()


def signed(req) -> bool:
    """The 5-line check: HMAC-SHA256 of the raw body, compared in constant time."""
    expected = "sha256=" + hmac.new(SECRET, req.get_data(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, req.headers.get("Stanzad-Signature", ""))


@app.post("/")
def echo():
    if SECRET and not signed(request):
        abort(401)
    stanza = ET.fromstring(request.get_data())
    body = stanza.find("{jabber:client}body")
    if body is None:
        body = stanza.find("body")
    if stanza.tag.endswith("message") and body is not None and body.text:
        reply = ET.Element("message")
        ET.SubElement(reply, "body").text = body.text
        return Response(ET.tostring(reply), content_type="application/xmpp+xml")
    return Response(status=204)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
