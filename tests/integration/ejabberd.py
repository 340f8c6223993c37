"""A private ejabberd (Debian 12 package, 23.01) for integration tests.

Self-contained: standard library only. Everything lives under ``workdir``:

    workdir/
      .erlang.cookie        random cookie, mode 0400 (HOME=workdir for every erl we run)
      etc/ejabberd.yml      server config (listeners on 127.0.0.1 only)
      etc/ejabberdctl.cfg   settings sourced by /usr/sbin/ejabberdctl (node name, dist port, ...)
      etc/inetrc            Erlang resolver config (ERL_INETRC)
      spool/                Mnesia database (users, roster)
      logs/ejabberd.log     ejabberd log (also error.log, crash dumps)
      logs/console.log      stdout/stderr of the foreground node
      ejabberd.pid

How it runs (see ``start``)::

    HOME=workdir /usr/sbin/ejabberdctl --config-dir workdir/etc --spool workdir/spool \
        --logs workdir/logs foreground
    HOME=workdir /usr/sbin/ejabberdctl --config-dir workdir/etc --spool workdir/spool \
        --logs workdir/logs register USER DOMAIN PASS

Notes on the choices made here:

* Root: the Debian script hard-codes ``INSTALLUSER=ejabberd`` and, when run as root, re-runs
  everything through ``su ejabberd``, which could not read/write a root-owned workdir. The script
  sources ``ejabberdctl.cfg`` *after* choosing how to run, so our cfg sets
  ``EXEC_CMD=as_current_user`` and everything runs as root directly. If we are neither root
  nor ``ejabberd`` the script refuses before reading the cfg, so we use a copy of it with
  ``INSTALLUSER`` emptied (workdir/bin/ejabberdctl).
* No epmd: ``ERL_DIST_PORT`` makes the script pass ``-erl_epmd_port P -start_epmd false`` to the
  node (and ``-dist_listen false`` to ejabberdctl client nodes), so the Erlang distribution
  listens on a fixed private loopback port and no epmd is started or contacted at all. Nothing
  touches a system epmd or a system ejabberd node.
* Each process we start carries the environment variable ``EJABBERD_TEST_HARNESS=<id>``; ``stop``
  kills every live process that still has it (node, erl_child_setup, inet_gethost, stray
  ejabberdctl client nodes, an epmd if one was ever spawned).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

EJABBERDCTL = "/usr/sbin/ejabberdctl"
MARKER_VAR = "EJABBERD_TEST_HARNESS"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def _processes_with_marker(marker: str) -> list[int]:
    """Live (non-zombie) processes whose environment contains MARKER_VAR=marker."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            if needle not in env:
                continue
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            if state not in (b"Z", b"X"):
                found.append(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


class EjabberdError(RuntimeError):
    pass


class Ejabberd:
    """A private ejabberd node: one virtual host, one XEP-0114 component, some users.

    ``start()`` returns once the c2s and component listeners accept connections and every user
    is registered. ``stop()`` is idempotent and leaves no process behind.
    """

    def __init__(self, workdir: str, domain: str = "example.test", component: str = "bot.example.test",
                 secret: str = "s3cret", users: dict[str, str] = {"alice": "pw"},
                 *, loglevel: str = "info", extra_modules: dict[str, dict] | None = None):
        self.workdir = Path(workdir).resolve()
        self.domain = domain
        self.component = component
        self.secret = secret
        self.users = dict(users)
        self.loglevel = loglevel
        self.extra_modules = dict(extra_modules or {})
        self.c2s_port = _free_port()
        self.component_port = _free_port()
        self.dist_port = _free_port()
        self.harness_id = secrets.token_hex(8)
        # Short name @localhost: the Debian script then uses -sname. Unique per workdir, and
        # kept in workdir/node-name because the Mnesia spool is bound to the node name
        # ("Node name mismatch" on a restart with another name).
        node_file = self.workdir / "node-name"
        if node_file.exists():
            self.node = node_file.read_text().strip()
        else:
            self.node = f"ejt_{os.getpid()}_{self.harness_id[:8]}@localhost"
        self.etc_dir = self.workdir / "etc"
        self.spool_dir = self.workdir / "spool"
        self.logs_dir = self.workdir / "logs"
        self.log_path = self.logs_dir / "ejabberd.log"
        self.console_path = self.logs_dir / "console.log"
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._console = None

    # ------------------------------------------------------------------ files

    def _ctl_script(self) -> str:
        if os.geteuid() == 0:
            return EJABBERDCTL
        # Not root: the stock script refuses unless we are the `ejabberd` user; use a copy
        # without INSTALLUSER (no su, runs as the current user).
        copy = self.workdir / "bin" / "ejabberdctl"
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            text = Path(EJABBERDCTL).read_text()
            copy.write_text(re.sub(r"^INSTALLUSER=.*$", "INSTALLUSER=", text, count=1, flags=re.M))
            copy.chmod(0o755)
        return str(copy)

    def _write_files(self) -> None:
        for d in (self.workdir, self.etc_dir, self.spool_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)
        (self.workdir / "node-name").write_text(self.node + "\n")
        cookie = self.workdir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)  # erl refuses a cookie file readable by others

        modules = {
            "mod_disco": {},
            "mod_ping": {},
            "mod_version": {"show_os": False},
            "mod_roster": {},  # so clients that fetch the roster on session start get a result
        }
        modules.update(self.extra_modules)
        modules_yaml = "".join(f"  {name}: {json.dumps(opts)}\n" for name, opts in modules.items())

        (self.etc_dir / "ejabberd.yml").write_text(f"""\
# Generated by tests/integration/ejabberd.py
loglevel: {self.loglevel}
hosts:
  - {_q(self.domain)}
certfiles: []
listen:
  -
    port: {self.c2s_port}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    access: c2s
    max_stanza_size: 1048576
    starttls: false
    starttls_required: false
  -
    port: {self.component_port}
    ip: "127.0.0.1"
    module: ejabberd_service
    access: all
    hosts:
      {_q(self.component)}:
        password: {_q(self.secret)}
auth_method: internal
auth_password_format: plain
s2s_access: none
acl:
  local:
    user_regexp: ""
  loopback:
    ip:
      - 127.0.0.0/8
access_rules:
  local:
    allow: local
  c2s:
    allow: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
modules:
{modules_yaml}""")

        # Sourced by the ejabberdctl shell script after it parsed --config-dir.
        (self.etc_dir / "ejabberdctl.cfg").write_text(f"""\
# Generated by tests/integration/ejabberd.py
EXEC_CMD=as_current_user
ERLANG_NODE={self.node}
ERL_DIST_PORT={self.dist_port}
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 -kernel inet_dist_use_interface {{127,0,0,1}}"
EJABBERD_PID_PATH={self.workdir}/ejabberd.pid
CONTRIB_MODULES_PATH={self.workdir}/contrib-modules
CONTRIB_MODULES_CONF_DIR={self.etc_dir}/modules.d
EJABBERD_BYPASS_WARNINGS=true
""")
        (self.etc_dir / "inetrc").write_text(
            '{lookup,["file"]}.\n{host,{127,0,0,1}, ["localhost"]}.\n')

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("ERL_", "EJABBERD", "ERLANG_", "CONTRIB_", "PYENV"))}
        env.update({
            "HOME": str(self.workdir),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            MARKER_VAR: self.harness_id,
        })
        return env

    def _ctl_argv(self, *args: str) -> list[str]:
        return [self._ctl_script(), "--config-dir", str(self.etc_dir), "--spool", str(self.spool_dir),
                "--logs", str(self.logs_dir), *args]

    # ------------------------------------------------------------------ control

    def ctl(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        """Run `ejabberdctl ARGS...` against this node (each call starts a client VM, ~0.5-1 s)."""
        result = subprocess.run(self._ctl_argv(*args), env=self._env(), cwd=self.spool_dir,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise EjabberdError(f"ejabberdctl {' '.join(args)} failed ({result.returncode}): "
                                f"{result.stdout}{result.stderr}")
        return result

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_offset(self) -> int:
        """The current length of the log: pass it as ``since`` to look only at later lines."""
        return len(self.log_text())

    def wait_for_log(self, pattern: str, timeout: float = 20.0, count: int = 1, since: int = 0) -> list[str]:
        """Polls the log until ``count`` lines after offset ``since`` match the regex ``pattern``
        (``re.search`` per line); returns the matching lines, or raises AssertionError at the deadline."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()[since:]
            found = [line for line in text.splitlines() if regex.search(line)]
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {count}x ejabberd log line matching {pattern!r} within {timeout} s "
                                     f"(found {len(found)}); log tail:\n" + text[-4000:])
            time.sleep(0.05)

    def console_text(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 60) -> None:
        if self.process is not None:
            raise EjabberdError("already started")
        t0 = time.monotonic()
        deadline = t0 + timeout
        attempts = 0
        while True:
            attempts += 1
            try:
                self._start_node(deadline)
                break
            except _PortClash:
                # Another process grabbed one of our ports (c2s, component or Erlang distribution)
                # between _free_port() and bind: retry with new ones.
                self.stop()
                if attempts >= 3 or time.monotonic() >= deadline:
                    raise EjabberdError("listener ports kept clashing (eaddrinuse)\n" + self.log_text()[-4000:])
                self.c2s_port, self.component_port, self.dist_port = _free_port(), _free_port(), _free_port()
            except BaseException:
                self.stop()
                raise
        try:
            self._register_users(deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def _start_node(self, deadline: float) -> None:
        self._write_files()
        offset = len(self.log_text())  # readiness is judged on this run's log lines only
        console_offset = len(self.console_text())
        self._console = open(self.console_path, "ab")
        self.process = subprocess.Popen(
            self._ctl_argv("foreground"), env=self._env(), cwd=self.spool_dir,
            stdin=subprocess.DEVNULL, stdout=self._console, stderr=subprocess.STDOUT,
            start_new_session=True)
        atexit.register(self.stop)
        wanted = [
            re.compile(r"ejabberd \S+ is started in the node " + re.escape(self.node)),
            re.compile(rf"Start accepting TCP connections at 127\.0\.0\.1:{self.c2s_port} for ejabberd_c2s"),
            re.compile(rf"Start accepting TCP connections at 127\.0\.0\.1:{self.component_port} for ejabberd_service"),
        ]
        while True:
            log = self.log_text()[offset:]
            if "eaddrinuse" in log:
                raise _PortClash()
            if "Failed to start ejabberd application" in log or "Error loading configuration" in log \
                    or "Invalid value of option" in log:
                raise EjabberdError("ejabberd failed to start:\n" + log[-6000:])
            if self.process.poll() is not None:
                if "register/listen error: eaddrinuse" in self.console_text()[console_offset:]:
                    raise _PortClash()  # the Erlang distribution port was taken
                raise EjabberdError(f"ejabberd exited with {self.process.returncode} during startup:\n"
                                    + self.console_text()[-6000:])
            if all(p.search(log) for p in wanted) and _port_open(self.c2s_port) \
                    and _port_open(self.component_port):
                return
            if time.monotonic() >= deadline:
                raise EjabberdError("ejabberd did not start in time:\n" + log[-6000:]
                                    + "\n--- console ---\n" + self.console_text()[-3000:])
            time.sleep(0.05)

    def _register_users(self, deadline: float) -> None:
        """`ejabberdctl register` for every user, in parallel (one client VM each)."""
        pending = dict(self.users)
        while pending:
            procs = {user: subprocess.Popen(self._ctl_argv("register", user, self.domain, password),
                                            env=self._env(), cwd=self.spool_dir, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                     for user, password in pending.items()}
            failures = {}
            for user, proc in procs.items():
                try:
                    out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    for p in procs.values():
                        p.kill()
                        p.wait()
                    raise EjabberdError(f"registering {user} timed out")
                if proc.returncode == 0:
                    del pending[user]
                elif "already registered" in out:
                    # Re-start on an existing spool: make sure the password is the requested one
                    # (change_password needs mod_admin_extra; unregister + register is core).
                    password = pending.pop(user)
                    self.ctl("unregister", user, self.domain)
                    self.ctl("register", user, self.domain, password)
                else:
                    failures[user] = out
            if pending:
                if time.monotonic() >= deadline:
                    raise EjabberdError(f"could not register users: {failures}\n" + self.log_text()[-3000:])
                time.sleep(0.2)

    def stop(self, timeout: float = 10) -> None:
        """Stop the node gracefully (SIGTERM), then SIGKILL whatever is left. Idempotent."""
        atexit.unregister(self.stop)
        proc, self.process = self.process, None
        if proc is not None:
            # SIGTERM to the Erlang VM makes it run init:stop(); the ejabberdctl shell (which waits
            # for it) exits right after. Never signal the shell alone: it would die first and leave
            # the VM orphaned. (The VM may still be exec'ing, or already exiting: keep looking.)
            signalled: set[int] = set()
            end = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < end:
                for pid in _processes_with_marker(self.harness_id):
                    cmd = _cmdline(pid)
                    if pid not in signalled and b"beam" in cmd and self.node.encode() in cmd \
                            and b"ejabberd_ctl" not in cmd:
                        _kill(pid, signal.SIGTERM)
                        signalled.add(pid)
                time.sleep(0.05)
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        if self._console is not None:
            self._console.close()
            self._console = None
        # Leftovers: erl_child_setup/inet_gethost (own sessions), ejabberdctl client VMs, epmd.
        end = time.monotonic() + timeout
        while True:
            left = _processes_with_marker(self.harness_id)
            if not left:
                break
            sig = signal.SIGTERM if time.monotonic() < end - timeout / 2 else signal.SIGKILL
            for pid in left:
                _kill(pid, sig)
            if time.monotonic() >= end:
                break
            time.sleep(0.05)

    def __enter__(self) -> "Ejabberd":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _PortClash(Exception):
    pass


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
