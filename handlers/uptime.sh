#!/bin/sh
# uptime.sh: a one-step text command (XEP-0050 ad-hoc command, SPEC §15). Clients list it as a button; running
# it shows this output as a note.
#
#   [[command]]
#   node = "uptime"
#   name = "Uptime"
#   exec = ["handlers/uptime.sh"]
#   format = "text"
#   from = ["*@example.org"]
#
# stdin is empty; the requester is in STANZA_FROM. A non-zero exit shows as an error note.
printf 'up since %s, load %s\n' "$(uptime -s 2>/dev/null || echo '?')" "$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')"
