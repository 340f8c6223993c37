"""Fixtures shared by the integration modules: one private Prosody per module, and alice logged in to it
once the module's own `stanzad` fixture is up (modules that need something else define their own)."""

from __future__ import annotations

import pytest

from harness import DOMAIN, Client, Prosody


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
