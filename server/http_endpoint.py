"""The plain-HTTP side of the server: /metrics for Prometheus, /healthz and /readyz for probes
that cannot speak gRPC over TLS (the kubelet's), 404 for anything else.

/healthz mirrors the gRPC health service "liveness" (200 until the process exits); /readyz
mirrors service "" (200 while serving, 503 while draining after SIGTERM).
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


class Health:
    """What the probes report; set by the server beside the gRPC health states."""

    def __init__(self) -> None:
        self.ready = False


class HttpEndpoint:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        handler = _handler(registry, health)
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kvferry-http",
                                        daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(registry: CollectorRegistry, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, encoder(registry), content_type)
            elif path == "/healthz":
                self._reply(200, b"ok\n")
            elif path == "/readyz":
                if health.ready:
                    self._reply(200, b"ready\n")
                else:
                    self._reply(503, b"not ready: starting or draining\n")
            else:
                self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes and probes every few seconds are not news

    return Handler
