"""A stanza sent while the component link is down is queued and delivered after the reconnect (SPEC §11):
here a REST POST made while Prosody is stopped reaches a route of stanzad itself, through the restarted
Prosody."""

from __future__ import annotations

import threading

from harness import COMPONENT, Prosody, Stanzad, component_config
from nginx import Nginx
from test_rest import TOKEN, call


def test_a_stanza_queued_while_the_link_is_down_is_delivered_after_reconnect(tmp_path_factory):
    prosody = Prosody(tmp_path_factory.mktemp("prosody"))
    prosody.start()
    socket_path = tmp_path_factory.mktemp("run") / "fastcgi.sock"
    extra = f'''
[rest]
listen = "unix:{socket_path}"
credentials = ["{TOKEN}"]
send_wait = 30

[[route]]
name = "sink"
to = ["sink@{COMPONENT}"]
exec = ["/bin/true"]
from_self = true  # the REST message comes from the component itself
'''
    daemon = Stanzad(tmp_path_factory.mktemp("stanzad"), component_config(prosody.component_port, reconnect_max=1, extra=extra))
    daemon.start()
    nginx = None
    try:
        daemon.wait_for_log("component connected")
        nginx = Nginx(tmp_path_factory.mktemp("nginx"), socket_path).start()

        prosody.stop()
        daemon.wait_for_log("component link down, reconnecting")
        result = {}
        post = threading.Thread(target=lambda: result.update(status=call(
            nginx, "POST", f"/rest/message/chat/sink@{COMPONENT}", "queued while down", {"Content-Type": "text/plain"})[0]))
        post.start()
        daemon.wait_for_log(r"component link down|connection refused|reconnect", count=2)  # still down, POST waiting
        assert post.is_alive()
        prosody.start()
        post.join(30)
        assert result.get("status") == 202
        assert len(daemon.wait_for_log("component connected", count=2)) == 2
        daemon.wait_for_log(rf"stanza handled .*from={COMPONENT} .*route=sink")
    finally:
        if nginx:
            nginx.stop()
        daemon.stop()
        prosody.stop()
