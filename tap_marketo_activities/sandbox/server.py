"""HTTP/1.1 plumbing: turn requests into Service calls and Replies into bytes."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from .service import FileSend, Reply, Request, Service, text_reply

CHUNK = 64 * 1024


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, port: int, service: Service) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.service = service


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "MarketoSandbox/1.0"
    # Headers and body go out in separate writes; Nagle + delayed ACK would add 40 ms each.
    disable_nagle_algorithm = True
    server: SandboxServer

    def do_GET(self) -> None:
        self.dispatch()

    def do_POST(self) -> None:
        self.dispatch()

    def do_PUT(self) -> None:
        self.dispatch()

    def do_DELETE(self) -> None:
        self.dispatch()

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean; nothing sensitive is ever logged

    def dispatch(self) -> None:
        request = self.read_request()
        service = self.server.service
        try:
            reply = service.handle(request)
        except Exception:  # a sandbox bug must show up, not hang the client
            traceback.print_exc(file=sys.stderr)
            reply = text_reply(500, "Internal sandbox error")
        try:
            self.send(reply)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            if reply.admitted:
                service.release()

    def read_request(self) -> Request:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        return Request(self.command, parts.path, query, headers, body)

    def send(self, reply: Reply) -> None:
        if reply.reset:
            self.drop()
            return
        if reply.file is not None:
            self.send_file(reply, reply.file)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(reply.body)
        self.wfile.flush()

    def drop(self) -> None:
        """Close the socket without a word, as a reset would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def send_file(self, reply: Reply, file: FileSend) -> None:
        length = file.end - file.start + 1
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if file.close_delimited:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if reply.status == 206:
            self.send_header("Content-Range", f"bytes {file.start}-{file.end}/{file.total}")
        self.end_headers()
        first = length if file.cut is None else file.cut
        self.stream(file, file.start, first)
        if file.cut is None:
            return
        if not file.stall:
            self.drop()  # honest Content-Length, then the body stops short
            return
        time.sleep(file.stall)
        self.stream(file, file.start + first, length - first)

    def stream(self, file: FileSend, start: int, count: int) -> None:
        corrupt_at = corrupt_positions(file) if file.corrupt else set()
        with open(file.path, "rb") as source:
            source.seek(start)
            position = start
            while count > 0:
                data = source.read(min(CHUNK, count))
                if not data:
                    break
                data = flip(data, position, corrupt_at)
                self.wfile.write(data)
                position += len(data)
                count -= len(data)
        self.wfile.flush()


def corrupt_positions(file: FileSend) -> set[int]:
    length = file.end - file.start + 1
    return {file.start + length * k // 4 for k in (1, 2, 3)}


def flip(data: bytes, position: int, targets: set[int]) -> bytes:
    hits = [t - position for t in targets if position <= t < position + len(data)]
    if not hits:
        return data
    changed = bytearray(data)
    for offset in hits:
        changed[offset] ^= 0x01  # stays the same UTF-8 length class in nearly all cases
    return bytes(changed)
