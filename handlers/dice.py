#!/usr/bin/env python3
"""dice.py: answers an iq in a custom namespace (format = "xml").

    [[route]]
    name = "dice"
    kinds = ["iq"]
    to = ["dice@bot.example.org"]       # keep disco, ping, … on the domain with the built-ins
    exec = ["handlers/dice.py"]
    format = "xml"

Request:  <iq type="get" to="dice@bot.example.org" id="r1"><roll xmlns="urn:example:dice" sides="6"/></iq>
Answer:   <iq type="result" …><roll xmlns="urn:example:dice" sides="6">4</roll></iq>
An iq the handler does not understand exits 69 (service-unavailable); a bad `sides` exits 64 (bad-request).
stanzad stamps the answer (to, from, id, type="result"), and answers an empty result if nothing is printed.
"""
import random
import sys
import xml.etree.ElementTree as ET

NS = "urn:example:dice"
stanza = ET.fromstring(sys.stdin.read())
roll = stanza.find(f"{{{NS}}}roll")
if roll is None or stanza.get("type") != "get":
    sys.exit(69)
try:
    sides = int(roll.get("sides", "6"))
    if not 2 <= sides <= 1000:
        raise ValueError
except ValueError:
    print("sides must be a number from 2 to 1000", file=sys.stderr)
    sys.exit(64)
print(f'<iq type="result"><roll xmlns="{NS}" sides="{sides}">{random.randint(1, sides)}</roll></iq>')
