#!/usr/bin/env python3
"""Runs a command handler (argv[2:]) with this process's stdin and environment and appends what it was given
and what it answered to the JSON-lines file argv[1]: {"stdin", "stdout", "exit"}. Its stdout, stderr and exit
status pass through unchanged, so stanzad sees the real handler."""
import json
import subprocess
import sys

log, argv = sys.argv[1], sys.argv[2:]
data = sys.stdin.buffer.read()
done = subprocess.run(argv, input=data, capture_output=True)
with open(log, "a", encoding="utf-8") as f:
    f.write(json.dumps({"stdin": data.decode(), "stdout": done.stdout.decode(), "exit": done.returncode}) + "\n")
sys.stdout.buffer.write(done.stdout)
sys.stderr.buffer.write(done.stderr)
sys.exit(done.returncode)
