"""Fixtures shared by the integration modules: one private Prosody per module, alice logged in to it once the
module's own `stanzad` fixture is up, and for REST modules a FastCGI socket path and nginx in front of it
(modules that need something else define their own)."""

from __future__ import annotations

import pytest

from harness import DOMAIN, Client, Prosody
from nginx import Nginx


@pytest.fixture(scope="module")
def prosody(tmp_path_factory):
    server = Prosody(tmp_path_factory.mktemp("prosody"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def alice(prosody, stanzad):
    client = Client(f"alice@{DOMAIN}/test", "pw", prosody.c2s_port)
    yield client
    client.close()


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory):
    return tmp_path_factory.mktemp("run") / "fastcgi.sock"


@pytest.fixture(scope="module")
def nginx(stanzad, socket_path, tmp_path_factory):
    server = Nginx(tmp_path_factory.mktemp("nginx"), socket_path)
    server.start()
    yield server
    server.stop()
