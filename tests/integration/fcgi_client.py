"""A minimal FastCGI client (the web-server side of FastCGI 1.0) for talking to stanzad's socket directly:
the tests that need what nginx would hide (idle and half-sent connections, thousands of long-polls)."""

from __future__ import annotations

import asyncio
import struct

BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT = 1, 2, 3, 4, 5, 6


def record(kind: int, request_id: int, content: bytes = b"") -> bytes:
    padding = (8 - len(content) % 8) % 8
    return struct.pack(">BBHHBB", 1, kind, request_id, len(content), padding, 0) + content + b"\0" * padding


def name_value(name: str, value: str) -> bytes:
    out = b""
    for length in (len(name.encode()), len(value.encode())):
        out += bytes([length]) if length < 128 else struct.pack(">I", length | 0x80000000)
    return out + name.encode() + value.encode()


def request(method: str, uri: str, body: bytes = b"", headers: dict[str, str] | None = None, keep: bool = False,
            request_id: int = 1) -> bytes:
    """The bytes nginx would send for one request (responder role)."""
    path, _, query = uri.partition("?")
    params = {"REQUEST_METHOD": method, "REQUEST_URI": uri, "DOCUMENT_URI": path, "QUERY_STRING": query,
              "CONTENT_LENGTH": str(len(body)) if body else "", "SERVER_PROTOCOL": "HTTP/1.1"}
    for name, value in (headers or {}).items():
        if name.lower() == "content-type":
            params["CONTENT_TYPE"] = value
        else:
            params["HTTP_" + name.upper().replace("-", "_")] = value
    encoded = b"".join(name_value(k, v) for k, v in params.items())
    out = record(BEGIN_REQUEST, request_id, struct.pack(">HB5x", 1, 1 if keep else 0))
    out += record(PARAMS, request_id, encoded) + record(PARAMS, request_id)
    for start in range(0, len(body), 65535):
        out += record(STDIN, request_id, body[start:start + 65535])
    return out + record(STDIN, request_id)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Reads records up to END_REQUEST; returns the CGI response's status, headers and body."""
    stdout = b""
    while True:
        header = await reader.readexactly(8)
        _, kind, _, length, padding, _ = struct.unpack(">BBHHBB", header)
        content = await reader.readexactly(length + padding)
        if kind == STDOUT:
            stdout += content[:length]
        elif kind == END_REQUEST:
            break
    head, _, body = stdout.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    status = int(headers.pop("status").split()[0])
    return status, headers, body


async def call(socket_path: str, method: str, uri: str, body: bytes = b"", headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    try:
        writer.write(request(method, uri, body, headers))
        try:
            await writer.drain()
        except ConnectionResetError:
            pass  # answered and closed before the drain returned: the answer is still there to read
        return await read_response(reader)
    finally:
        writer.close()
