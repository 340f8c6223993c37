#!/usr/bin/env python3
"""echo_xml.py: replies with the body of the message it gets (format = "xml").

    [[route]]
    name = "echo-xml"
    exec = ["handlers/echo_xml.py"]
    format = "xml"

stdin is the stanza as XML in the jabber:client namespace, without an xmlns attribute (the bytes mod_rest
POSTs to its callbacks); print one or more stanzas. Addresses, id and type are filled in when left out.
Standard library only.
"""
import sys
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

data = sys.stdin.read()
stanza = ET.fromstring(data)
body = stanza.find("body")
if body is not None and body.text:
    print(f"<message><body>{escape(body.text)}</body></message>")
