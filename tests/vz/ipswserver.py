"""A real HTTP server (stdlib, in a thread) serving one fake IPSW, with Range support and a way to
drop the connection mid-body, for the `--ipsw latest` download tests."""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

NAME = "UniversalMac_26.5_25F71_Restore.ipsw"


class IpswServer:
    def __init__(self, payload: bytes, *, name: str = NAME) -> None:
        self.payload, self.name = payload, name
        self.range_headers: list[str | None] = []   # the Range header of each GET (None: none sent)
        self.drop_after: int | None = None          # next response: send this many body bytes, then cut
        self.honour_ranges = True
        self.content_type = "application/octet-stream"
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="ipsw-server", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/{self.name}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path != f"/{server.name}":
                    self.send_error(404)
                    return
                header = self.headers.get("Range")
                server.range_headers.append(header)
                body, total = server.payload, len(server.payload)
                m = re.fullmatch(r"bytes=(\d+)-", header or "")
                if m and server.honour_ranges:
                    start = int(m.group(1))
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                    body = body[start:]
                else:
                    self.send_response(200)
                self.send_header("Content-Type", server.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut, server.drop_after = server.drop_after, None
                if cut is None:
                    self.wfile.write(body)
                    return
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-body
                self.close_connection = True

        return Handler
