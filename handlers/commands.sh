#!/bin/sh
# commands.sh: a tiny command bot (format = "text"). Send it "help".
#
#   [[route]]
#   name = "commands"
#   to = ["bot@bot.example.org"]
#   exec = ["handlers/commands.sh"]
#   format = "text"
#
# The message body arrives on stdin; the reply is whatever goes to stdout. Nothing from the message is
# ever put into a command line: it is only read as data.
read -r command rest || true
case "$command" in
    help|"")
        echo "commands: help, date, uptime, whoami, echo TEXT" ;;
    date)
        date -u '+%Y-%m-%dT%H:%M:%SZ' ;;
    uptime)
        uptime ;;
    whoami)
        echo "you are $STANZA_FROM, talking to $STANZA_TO" ;;
    echo)
        printf '%s\n' "$rest" ;;
    *)
        printf 'unknown command: %s (try help)\n' "$command"
        exit 64 ;;
esac
