"""schemathesis against docs/openapi.yaml through nginx and stanzad (real Prosody behind): no 5xx the
document does not list, no response that violates its schema. Bounded example count."""

from __future__ import annotations

import os
import subprocess

import pytest

from harness import REPO, Prosody, Stanzad, component_config
from nginx import Nginx

TOKEN = "Bearer c2NoZW1hdGhlc2lz"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    prosody = Prosody(tmp_path_factory.mktemp("prosody"))
    prosody.start()
    socket_path = tmp_path_factory.mktemp("run") / "fastcgi.sock"
    extra = f'''
[rest]
listen = "unix:{socket_path}"
credentials = ["{TOKEN}"]
iq_timeout = 3
'''
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, extra=extra))
    daemon.start()
    daemon.wait_for_log("REST API listening")
    daemon.wait_for_log("component connected")
    nginx = Nginx(tmp_path_factory.mktemp("nginx"), socket_path).start()
    yield nginx
    nginx.stop()
    daemon.stop()
    prosody.stop()


def test_schemathesis_finds_no_undocumented_status_and_no_schema_violation(stack, tmp_path):
    binary = os.environ.get("SCHEMATHESIS_BIN", str(REPO / ".build-venv" / "bin" / "schemathesis"))
    assert os.path.exists(binary), f"{binary} missing: scripts/test installs schemathesis into .build-venv"
    result = subprocess.run(
        [binary, "run", str(REPO / "docs" / "openapi.yaml"), "--url", stack.base, "-H", f"Authorization: {TOKEN}",
         "--checks", "status_code_conformance,content_type_conformance,response_schema_conformance",
         "--max-examples", os.environ.get("SCHEMATHESIS_EXAMPLES", "15"), "--request-timeout", "20",
         "--generation-deterministic", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, SCHEMATHESIS_HOOKS=""))
    print(result.stdout[-4000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
