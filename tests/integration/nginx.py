"""A private nginx that serves examples/nginx/stanzad.conf, the server block users copy, with only the
listen address and the socket path replaced."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from harness import REPO, free_port, wait_for_port

EXAMPLE = REPO / "examples" / "nginx" / "stanzad.conf"


class Nginx:
    def __init__(self, workdir: Path, socket_path: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.socket_path = socket_path
        self.process: subprocess.Popen | None = None

    def write_config(self) -> Path:
        block = EXAMPLE.read_text()
        assert "listen 127.0.0.1:8080;" in block and "unix:/run/stanzad/fastcgi.sock" in block
        block = block.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{self.port};")
        block = block.replace("unix:/run/stanzad/fastcgi.sock", f"unix:{self.socket_path}")
        (self.workdir / "stanzad.conf").write_text(block)
        shutil.copy("/etc/nginx/fastcgi_params", self.workdir / "fastcgi_params")
        user = "user root root;" if os.geteuid() == 0 else ""
        temp = self.workdir / "tmp"
        temp.mkdir(exist_ok=True)
        config = self.workdir / "nginx.conf"
        config.write_text(f"""
{user}
daemon off;
worker_processes 1;
worker_rlimit_nofile 8192;
error_log {self.workdir}/error.log warn;
pid {self.workdir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    fastcgi_temp_path {temp}/fastcgi;
    proxy_temp_path {temp}/proxy;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {self.workdir}/stanzad.conf;
}}
""")
        return config

    def start(self) -> "Nginx":
        config = self.write_config()
        check = subprocess.run(["nginx", "-t", "-p", str(self.workdir), "-c", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen(["nginx", "-p", str(self.workdir), "-c", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"
