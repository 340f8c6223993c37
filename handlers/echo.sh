#!/bin/sh
# echo.sh: replies with the message it gets (format = "text").
#
#   [[route]]
#   name = "echo"
#   exec = ["handlers/echo.sh"]
#   format = "text"
#
# stdin is the message body; whatever is printed on stdout is the reply body (empty: no reply).
# The sender is in $STANZA_FROM, the addressed JID in $STANZA_TO. Exit non-zero to answer with an error
# (64 bad-request, 77 forbidden, … see SPEC §5.3); the text printed before it becomes the error text.
exec cat
