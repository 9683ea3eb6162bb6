"""A webhook receiver on 127.0.0.1 for tests: records each delivery, fails the first N on purpose."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, fail_first: int = 0):
        self.deliveries: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                ok = len(receiver.deliveries) > receiver.fail_first
                self.send_response(200 if ok else 500)
                self.end_headers()
                if ok:
                    receiver.arrived.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
