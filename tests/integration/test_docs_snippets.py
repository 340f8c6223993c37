"""Every configuration snippet in README.md, docs/CONFIG.md and examples/ is loaded by the real thing:

- TOML (README, docs/CONFIG.md, docs/SCALING.md, examples/*.toml): `stanzad check` accepts it (fragments without a
  [component] section get a minimal one); README's handler scripts are run through `stanzad try` by the
  README's own console commands, whose output must match what the README shows.
- examples/prosody/stanzad.cfg.lua: a real Prosody includes it unchanged, and stanzad with
  examples/stanzad.toml connects to it and answers a user.
- examples/ejabberd/stanzad.yml: a real ejabberd includes it (include_config_file, only the port changed),
  and stanzad with examples/stanzad.toml connects to it and answers a user.
- examples/systemd/stanzad.service: `systemd-analyze verify` (ExecStart pointed at the binary under test)
  and `systemd-analyze security` rates its sandbox "OK" or better.
- README's copies of the example files (lua, yaml, nginx, ini blocks) are verbatim parts of those files.
(The nginx block is loaded by nginx in test_rest.py; examples/ejabberd/cluster.yml and examples/nginx/cluster.conf
by ejabberd and nginx in test_scale.py.)"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from ejabberd import Ejabberd
from harness import DOMAIN, REPO, Client, Prosody, Stanzad, stanzad_binary

README = REPO / "README.md"
CONFIG_DOC = REPO / "docs" / "CONFIG.md"
SCALING_DOC = REPO / "docs" / "SCALING.md"
EXAMPLES = REPO / "examples"
PROSODY_SNIPPET = EXAMPLES / "prosody" / "stanzad.cfg.lua"
EJABBERD_SNIPPET = EXAMPLES / "ejabberd" / "stanzad.yml"
UNIT = EXAMPLES / "systemd" / "stanzad.service"
PRODUCTION = EXAMPLES / "stanzad.toml"
MINIMAL_COMPONENT = '[component]\njid = "bot.example.org"\nserver = "127.0.0.1:5347"\nsecret = "x"\n'


def code_blocks(path: Path) -> list[tuple[str, str, int]]:
    """(language, text, line number) of every fenced code block."""
    blocks = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if match:
            start = i
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append((match.group(1), "\n".join(body) + "\n", start + 1))
        i += 1
    return blocks


def handler_scripts(path: Path) -> dict[str, str]:
    """Code blocks that are executables: first line `#!…`, second line `# NAME: …`."""
    scripts = {}
    for _, text, _ in code_blocks(path):
        lines = text.splitlines()
        if len(lines) > 1 and lines[0].startswith("#!"):
            name = re.match(r"#\s*([\w.-]+):", lines[1])
            assert name, f"a script in {path.name} should name itself on its second line: {lines[1]!r}"
            scripts[name.group(1)] = text
    return scripts


def layout(directory: Path, doc: Path) -> Path:
    """A directory like the one the docs assume: handlers/ and the doc's handler scripts beside the config."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "handlers").symlink_to(REPO / "handlers")
    for name, text in handler_scripts(doc).items():
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)
    return directory


def check(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(stanzad_binary()), "check", "--config", str(config)], capture_output=True,
                          text=True, timeout=30)


TOML_SNIPPETS = [(doc, text, line) for doc in (README, CONFIG_DOC, SCALING_DOC) for lang, text, line in code_blocks(doc)
                 if lang == "toml"]


@pytest.mark.parametrize("doc, text, line", TOML_SNIPPETS,
                         ids=[f"{doc.name}:{line}" for doc, _, line in TOML_SNIPPETS])
def test_toml_snippet_passes_stanzad_check(doc, text, line, tmp_path):
    directory = layout(tmp_path / "etc", doc)
    config = directory / "stanzad.toml"
    config.write_text(text if re.search(r"^\[component\]", text, re.M) else MINIMAL_COMPONENT + text)
    result = check(config)
    assert result.returncode == 0, f"{doc.name}:{line}\n{text}\n{result.stdout}{result.stderr}"


def test_the_docs_have_toml_snippets_and_handlers():
    assert len([s for s in TOML_SNIPPETS if s[0] == README]) >= 2
    assert len([s for s in TOML_SNIPPETS if s[0] == CONFIG_DOC]) >= 4
    assert {"greet.sh", "reverse.py"} <= set(handler_scripts(README))


def test_config_doc_names_every_key_the_loader_accepts():
    source = (REPO / "Sources" / "Daemon" / "Config.swift").read_text()
    keys = set()
    for allowed in re.findall(r"allow\(t, \[(.*?)\]", source, re.S):
        keys |= set(re.findall(r'"(\w+)"', allowed))
    assert len(keys) > 40
    doc = CONFIG_DOC.read_text()
    missing = sorted(key for key in keys if f"`{key}`" not in doc)
    assert not missing, f"docs/CONFIG.md does not describe: {missing}"


def test_readme_console_commands_print_what_the_readme_shows(tmp_path):
    directory = layout(tmp_path / "bot", README)
    greet_config = next(text for _, text, _ in TOML_SNIPPETS if 'name = "greet"' in text)
    (directory / "stanzad.toml").write_text(greet_config)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "stanzad").symlink_to(stanzad_binary())
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    normalize = lambda text: re.sub(r'id="[^"]*"', 'id="…"', text).strip()
    consoles = [text for lang, text, _ in code_blocks(README) if lang == "console"]
    assert consoles
    ran = 0
    for console in consoles:
        for chunk in re.split(r"^\$ ", console, flags=re.M)[1:]:
            command, _, expected = chunk.partition("\n")
            result = subprocess.run(shlex.split(command), cwd=directory, env=env, capture_output=True, text=True,
                                    timeout=30)
            assert result.returncode == 0, f"$ {command}\n{result.stdout}{result.stderr}"
            assert normalize(result.stdout) == normalize(expected), f"$ {command}"
            ran += 1
    assert ran >= 2


@pytest.mark.parametrize("lang, example", [
    ("lua", PROSODY_SNIPPET), ("yaml", EJABBERD_SNIPPET), ("nginx", EXAMPLES / "nginx" / "stanzad.conf"),
    ("ini", UNIT)])
def test_readme_copies_of_example_files_are_verbatim(lang, example):
    examples = [example] + (sorted((EXAMPLES / "prometheus").glob("*.yml")) if lang == "yaml" else [])
    files = [[line.strip() for line in path.read_text().splitlines()] for path in examples]
    blocks = [text for block_lang, text, _ in code_blocks(README) if block_lang == lang]
    assert blocks, f"README shows no {lang} block from {example.name}"
    for text in blocks:
        lines = [line.strip() for line in text.strip("\n").splitlines()]
        assert any(file_lines[i:i + len(lines)] == lines for file_lines in files for i in range(len(file_lines))), \
            f"README's {lang} block is not part of {', '.join(str(p.relative_to(REPO)) for p in examples)}:\n{text}"


def test_prometheus_examples_are_valid_yaml_naming_metrics_stanzad_serves():
    import yaml
    rules = yaml.safe_load((EXAMPLES / "prometheus" / "stanzad-rules.yml").read_text())
    scrape = yaml.safe_load((EXAMPLES / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["job_name"] == "stanzad"
    documented = (REPO / "docs" / "CONFIG.md").read_text()
    alerts = rules["groups"][0]["rules"]
    assert [a["alert"] for a in alerts] == ["StanzadLinkDown", "StanzadQueueGrowing", "StanzadHandlerErrors"]
    for alert in alerts:
        for name in re.findall(r"stanzad_[a-z_]+", alert["expr"]):
            assert f"`{name}" in documented, f"{alert['alert']} uses {name}, which docs/CONFIG.md does not list"


def test_demo_config_passes_check_as_it_stands():
    result = check(EXAMPLES / "demo.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stdout


def production_layout(directory: Path, secret: str, server: str | None = None, socket: Path | None = None) -> Path:
    """examples/stanzad.toml installed as the README says: secret, credentials and handlers beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    text = PRODUCTION.read_text()
    if server:
        text = text.replace('server = "127.0.0.1:5347"', f'server = "{server}"')
    if socket:
        text = text.replace("unix:/run/stanzad/fastcgi.sock", f"unix:{socket}")
    (directory / "stanzad.toml").write_text(text)
    for name, content in (("secret", secret + "\n"), ("credentials", "Bearer test-token\n")):
        (directory / name).write_text(content)
        (directory / name).chmod(0o640)
    shutil.copytree(REPO / "handlers", directory / "handlers")
    return directory / "stanzad.toml"


def test_production_config_passes_check_without_warnings(tmp_path):
    result = check(production_layout(tmp_path / "etc-stanzad", "s3cret"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stdout, result.stdout


def snippet_secret(text: str, pattern: str) -> str:
    return re.search(pattern, text).group(1)


def echo_round_trip(port: int) -> None:
    client = Client(f"alice@{DOMAIN}/snippets", "pw", port)
    try:
        client.xmpp.send_message(mto="echo@bot.example.org", mbody="through the example config", mtype="chat")
        reply = client.next_message(15)
        assert reply["type"] == "chat", reply
        assert reply["body"] == "through the example config"
    finally:
        client.close()


class SnippetProsody(Prosody):
    """The harness's Prosody with its own component replaced by `Include` of the example file, unchanged, at
    the end of the config, where Debian's prosody.cfg.lua includes conf.d/*.cfg.lua."""

    def write_config(self) -> None:
        super().write_config()
        text = self.config.read_text()
        text, count = re.subn(r'^Component "[^"]+"\n\s+component_secret = "[^"]*"\n', "", text, flags=re.M)
        assert count == 1, text
        self.config.write_text(text + f'\nInclude "{PROSODY_SNIPPET}"\n')


def test_prosody_loads_the_snippet_and_stanzad_with_the_example_config_serves_through_it(tmp_path):
    prosody = SnippetProsody(tmp_path / "prosody")
    prosody.workdir.mkdir()
    prosody.start()
    daemon = None
    try:
        secret = snippet_secret(PROSODY_SNIPPET.read_text(), r'component_secret = "([^"]+)"')
        config = production_layout(tmp_path / "etc", secret, server=f"127.0.0.1:{prosody.component_port}",
                                   socket=tmp_path / "fastcgi.sock")
        daemon = Stanzad(config.parent, config.read_text())
        daemon.start()
        daemon.wait_for_log("component connected")
        assert "bot.example.org" in prosody.log_text()
        echo_round_trip(prosody.c2s_port)
    finally:
        if daemon:
            daemon.stop()
        prosody.stop()


class SnippetEjabberd(Ejabberd):
    """The harness's ejabberd with its component listener replaced by the example file, included with
    include_config_file as the file's comment says; only the port is this test's."""

    def _write_files(self) -> None:
        super()._write_files()
        config = self.etc_dir / "ejabberd.yml"
        text, count = re.subn(r'  -\n    port: \d+\n    ip: "127\.0\.0\.1"\n    module: ejabberd_service\n(?:      .*\n|    .*\n)*?(?=auth_method)',
                              "", config.read_text())
        assert count == 1, text
        snippet = EJABBERD_SNIPPET.read_text()
        assert snippet.count("port: 5347") == 1
        (self.etc_dir / "stanzad.yml").write_text(snippet.replace("port: 5347", f"port: {self.component_port}"))
        config.write_text(text + f"include_config_file:\n  {self.etc_dir / 'stanzad.yml'}:\n    allow_only: [listen]\n")


def test_ejabberd_loads_the_snippet_and_stanzad_with_the_example_config_serves_through_it(tmp_path):
    secret = snippet_secret(EJABBERD_SNIPPET.read_text(), r'password: "([^"]+)"')
    server = SnippetEjabberd(str(tmp_path / "ejabberd"), domain=DOMAIN, component="bot.example.org", secret=secret,
                             users={"alice": "pw"})
    server.start()
    daemon = None
    try:
        config = production_layout(tmp_path / "etc", secret, server=f"127.0.0.1:{server.component_port}",
                                   socket=tmp_path / "fastcgi.sock")
        daemon = Stanzad(config.parent, config.read_text())
        daemon.start()
        daemon.wait_for_log("component connected")
        echo_round_trip(server.c2s_port)
    finally:
        if daemon:
            daemon.stop()
        server.stop()


def test_systemd_unit_verifies_and_its_sandbox_rates_ok(tmp_path):
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/stanzad run --config /etc/stanzad/stanzad.toml" in text
    for directive in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "RuntimeDirectory=stanzad",
                      "User=stanzad"):
        assert directive in text
    # The socket path the example config uses is the unit's RuntimeDirectory.
    assert 'listen = "unix:/run/stanzad/fastcgi.sock"' in PRODUCTION.read_text()
    # verify insists that ExecStart exists: point it at the binary under test.
    unit = tmp_path / "stanzad.service"
    unit.write_text(text.replace("/usr/local/bin/stanzad", str(stanzad_binary())))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    # The socket unit beside it (socket activation, [rest] listen = "systemd") verifies with it.
    assert "Type=notify" in text and "WatchdogSec=" in text
    socket_unit = tmp_path / "stanzad.socket"
    socket_unit.write_text((EXAMPLES / "systemd" / "stanzad.socket").read_text())
    assert "ListenStream=/run/stanzad/fastcgi.sock" in socket_unit.read_text()
    result = subprocess.run(["systemd-analyze", "verify", str(socket_unit), str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr
    # Exposure 4.0 or lower is what systemd-analyze calls "OK".
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=40", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
