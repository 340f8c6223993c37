"""systemd integration (SPEC §19) as systemd speaks it, without systemd as PID 1 (CI containers have none): a
notification socket like systemd's receives READY, RELOADING with MONOTONIC_USEC, WATCHDOG and STOPPING; the
watchdog falls silent when an event loop is blocked (test hook); and a FastCGI socket passed as systemd's
socket activation does (fd 3, LISTEN_PID, LISTEN_FDS) keeps requests waiting in its backlog while stanzad
restarts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from harness import COMPONENT, Stanzad, component_config, stanzad_binary
from nginx import Nginx


class NotifySocket:
    """The receiving end of $NOTIFY_SOCKET: collects each datagram."""

    def __init__(self, path: Path):
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.messages: list[tuple[float, str]] = []
        self.condition = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.socket.recv(4096)
            except OSError:
                return
            with self.condition:
                self.messages.append((time.monotonic(), data.decode()))
                self.condition.notify_all()

    def wait_for(self, prefix: str, after: int = 0, timeout: float = 20) -> tuple[int, str]:
        """The index and text of the first message from `after` on that starts with `prefix`."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                for index in range(after, len(self.messages)):
                    if self.messages[index][1].startswith(prefix):
                        return index, self.messages[index][1]
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {prefix!r} from stanzad; got {[m for _, m in self.messages[after:]]}")
                self.condition.wait(0.2)

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def notify(tmp_path):
    receiver = NotifySocket(tmp_path / "notify.sock")
    yield receiver
    receiver.close()


def test_ready_reloading_watchdog_and_a_blocked_loop_silences_the_watchdog(prosody, notify, tmp_path):
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="1000000", STANZAD_TEST_BLOCK_LOOP_ON_SIGUSR2="1")
    daemon = Stanzad(tmp_path, component_config(prosody.component_port), env=env)
    daemon.start()
    try:
        ready, text = notify.wait_for("READY=1")
        watchdog, _ = notify.wait_for("WATCHDOG=1", after=ready)
        notify.wait_for("WATCHDOG=1", after=watchdog + 1)  # every half WATCHDOG_USEC
        daemon.signal(signal.SIGHUP)
        reloading, text = notify.wait_for("RELOADING=1", after=ready)
        usec = int(text.split("MONOTONIC_USEC=")[1].split("\n")[0])
        assert abs(usec / 1e6 - time.monotonic()) < 5, "MONOTONIC_USEC is CLOCK_MONOTONIC"
        notify.wait_for("READY=1", after=reloading)
        daemon.wait_for_log("configuration reloaded")
        daemon.signal(signal.SIGUSR2)
        daemon.wait_for_log("test hook: blocking an event loop")
        time.sleep(0.6)  # a pet already on its way when the loop blocked may still arrive
        with notify.condition:
            silent_from = len(notify.messages)
        with pytest.raises(AssertionError):
            notify.wait_for("WATCHDOG=1", after=silent_from, timeout=3)
        daemon.wait_for_log("watchdog: an event loop or the process loop does not respond")
    finally:
        daemon.process.kill()
        daemon.process.wait()


def test_stopping_is_sent_when_shutdown_begins(prosody, notify, tmp_path):
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path))
    daemon = Stanzad(tmp_path, component_config(prosody.component_port), env=env)
    daemon.start()
    try:
        ready, _ = notify.wait_for("READY=1")
        daemon.signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", after=ready)
        assert daemon.wait(20) == 0
    finally:
        daemon.stop()


def activated(config: Path, listener: socket.socket, workdir: Path) -> subprocess.Popen:
    """stanzad started as systemd starts a socket-activated service: the socket as fd 3, LISTEN_PID its pid."""
    fd = listener.fileno()
    # The socket becomes fd 3 in the child (before the other descriptors are closed); the shell sets LISTEN_PID to
    # its own pid, which stanzad keeps across exec.
    return subprocess.Popen(["/bin/sh", "-c", 'LISTEN_PID=$$ exec "$0" "$@"', str(stanzad_binary()), "run", "--config", str(config)],
                            env=dict(os.environ, LISTEN_FDS="1", LISTEN_FDNAMES="stanzad.socket"),
                            preexec_fn=lambda: os.dup2(fd, 3), pass_fds=(3,), cwd=workdir)


def test_socket_activation_keeps_requests_waiting_while_stanzad_restarts(prosody, tmp_path):
    socket_path = tmp_path / "fastcgi.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen(128)
    config = tmp_path / "stanzad.toml"
    config.write_text(component_config(prosody.component_port, extra='[rest]\nlisten = "systemd"\ncredentials = ["Bearer x"]\n'))
    nginx = Nginx(tmp_path / "nginx", socket_path)
    (tmp_path / "nginx").mkdir()
    first = activated(config, listener, tmp_path)
    second = None
    try:
        nginx.start()

        def health() -> int:
            import http.client
            connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=30)
            connection.request("GET", "/rest/health")
            status = connection.getresponse().status
            connection.close()
            return status

        deadline = time.monotonic() + 20
        while health() != 200:
            assert time.monotonic() < deadline, "stanzad never became healthy"
            time.sleep(0.1)  # polling the component link's state, which has no event to wait on from here
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0
        assert socket_path.exists(), "stanzad leaves systemd's socket alone"
        # stanzad is down: a request now waits in the socket's backlog instead of being refused.
        result: dict[str, int] = {}
        waiter = threading.Thread(target=lambda: result.update(status=health()))
        waiter.start()
        time.sleep(0.5)  # the request is in the backlog (nothing to wait on: nobody accepts it)
        assert waiter.is_alive(), "the request was answered without stanzad"
        second = activated(config, listener, tmp_path)
        waiter.join(30)
        assert result.get("status") in (200, 503), result  # answered by the new process (503 until its link is up)
    finally:
        for process in (first, second):
            if process and process.poll() is None:
                process.kill()
                process.wait()
        nginx.stop()
        listener.close()


def test_listen_systemd_without_a_passed_socket_is_a_clear_error(prosody, tmp_path):
    daemon = Stanzad(tmp_path, component_config(prosody.component_port, extra='[rest]\nlisten = "systemd"\ncredentials = ["Bearer x"]\n'))
    daemon.start()
    assert daemon.wait(10) == 78
    line = daemon.wait_for_log("REST API cannot start")[0]
    assert "systemd passed no socket" in line and "stanzad.socket" in line
