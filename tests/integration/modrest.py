"""A private Prosody that also runs the real mod_rest (the pinned copy in ../shared/anchors) on a component,
with its HTTP server on a loopback port and a fixed Bearer token: the reference for the differential tests."""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from harness import REPO, Prosody, free_port, wait_for_port

ANCHORS = Path(os.environ.get("STANZAD_ANCHORS", REPO.parent / "shared" / "anchors"))
if not ANCHORS.exists():
    ANCHORS = Path("/work/shared/anchors")
REST_HOST = "rest.example.test"
MUC_HOST = "muc.example.test"
TOKEN = "Bearer " + base64.b64encode(f"1;api@{REST_HOST};fixedtoken".encode()).decode()


class ModRestProsody(Prosody):
    """Prosody with `Component "rest.example.test" "rest"` (mod_rest + mod_fixed_token) and an HTTP port."""

    def __init__(self, workdir: Path, callback_url: str | None = None, **kwargs):
        if not (ANCHORS / "prosody-modules" / "mod_rest" / "mod_rest.lua").exists():
            raise FileNotFoundError(f"mod_rest not found under {ANCHORS}: set STANZAD_ANCHORS to the anchors directory")
        super().__init__(workdir, **kwargs)
        self.http_port = free_port()
        self.callback_url = callback_url

    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text()
        text = text.replace("http_ports = {}", f'http_ports = {{ {self.http_port} }}\nhttp_interfaces = {{ "127.0.0.1" }}')
        text = text.replace('modules_disabled = { "s2s" }',
                            f'modules_disabled = {{ "s2s" }}\nplugin_paths = {{ "{ANCHORS}/prosody-modules", '
                            f'"{ANCHORS}/prosody-plugins" }}')
        callback = f'    rest_callback_url = "{self.callback_url}"\n' if self.callback_url else ""
        text += f'Component "{REST_HOST}" "rest"\n    modules_enabled = {{ "fixed_token" }}\n{callback}'
        # A room service with archives, for archive queries through both REST APIs.
        text += (f'Component "{MUC_HOST}" "muc"\n    modules_enabled = {{ "muc_mam" }}\n    muc_room_locking = false\n'
                 '    muc_log_by_default = true\n    muc_log_all_rooms = true\n')
        self.config.write_text(text)

    def start(self) -> None:
        super().start()
        wait_for_port(self.http_port)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def post(base: str, path: str, body: bytes, content_type: str, accept: str, auth: str | None) -> tuple[int, str, bytes]:
    """POST and return (status, content type, body) whatever the status."""
    headers = {"Content-Type": content_type, "Accept": accept, "Host": REST_HOST}
    if auth:
        headers["Authorization"] = auth
    request = urllib.request.Request(base + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def echo(base: str, body: str, content_type: str, accept: str, auth: str | None) -> tuple[int, object]:
    """POST /rest/echo; the answer parsed as JSON when it is JSON, else as text."""
    status, type_, data = post(base, "/rest/echo", body.encode(), content_type, accept, auth)
    if type_.startswith("application/json"):
        try:
            return status, json.loads(data)
        except ValueError:
            pass
    return status, data.decode(errors="replace")
