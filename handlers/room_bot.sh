#!/bin/sh
# room_bot.sh: a group chat bot (format = "text"). stanzad gives it the message body on stdin and the room
# and the sender's nick in STANZA_ROOM and STANZA_NICK; what it prints goes to the room (or back to the
# occupant, for a private message). Commands start with "!"; a mention without one gets the help.
read -r line || true
# A mention ("bot: !time", "bot, help") counts like the command after it.
command=$(printf '%s\n' "$line" | sed -e 's/^[^!:,]*[:,][[:space:]]*//')
case "$command" in
    "!ping"*) echo "pong" ;;
    "!time"*) date -u '+%Y-%m-%d %H:%M:%S UTC' ;;
    "!whoami"*) echo "$STANZA_NICK in $STANZA_ROOM" ;;
    "!roll"*)
        sides=$(printf '%s\n' "$command" | sed -n 's/^!roll[[:space:]]*\([0-9][0-9]*\).*/\1/p')
        sides=${sides:-6}
        [ "$sides" -ge 1 ] 2>/dev/null && [ "$sides" -le 1000000 ] || { echo "$STANZA_NICK: !roll N, with N from 1 to 1000000"; exit 0; }
        echo "$STANZA_NICK rolls $(( $(od -An -N4 -tu4 /dev/urandom) % sides + 1 )) (d$sides)" ;;
    *) echo "$STANZA_NICK: I know !ping, !time, !whoami and !roll N" ;;
esac
