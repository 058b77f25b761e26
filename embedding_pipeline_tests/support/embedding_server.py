"""A deterministic OpenAI-compatible embeddings server on loopback, with a fixed delay per request.

Every text gets a unit vector drawn from a generator seeded by sha256(model, text): the same text
gives the same vector in every process and on every run, so a distributed run's table can be
compared vector for vector with a single-process run. The delay (slept, not computed) makes the
server I/O-bound: throughput measured against it is the orchestration and database overhead, not
this machine's CPU. Used by the Celery test (kill a worker while a request is in flight) and by
the shard scaling benchmark.

    python -m embedding_pipeline_tests.support.embedding_server --port 8090 --delay 0.2
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import numpy as np


def vector(model: str, text: str, dimensions: int) -> np.ndarray:
    """The server's answer for one text: a float32 unit vector, a pure function of (model, text, dimensions).

    Drawn from SHAKE-256 of (model, text), not a seeded numpy Generator: building a Generator per text
    cost ~0.7 ms, so 64 texts took ~45 ms of the server's CPU per request, serialized by its GIL, and
    the shard benchmark measured this server instead of the workers (8 workers: 9.7 s for 8.3 s of it)."""
    raw = hashlib.shake_256(f"{model}\x00{text}".encode()).digest(2 * dimensions)
    v = np.frombuffer(raw, dtype=np.int16).astype(np.float32) + 0.5  # + 0.5: never the zero vector
    return v / np.linalg.norm(v)


class EmbeddingServer:
    """``with EmbeddingServer(dimensions=64, delay=0.2) as s: s.url`` (``.../v1``); ``requests``/``texts`` count
    calls, ``inputs`` holds each request's input list in arrival order."""

    def __init__(self, *, dimensions: int = 64, delay: float = 0.0, host: str = "127.0.0.1", port: int = 0):
        self.dimensions, self.delay = dimensions, delay
        self.requests = self.texts = 0
        self.inputs: list[list[str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; without TCP_NODELAY the second waits for the
            # client's delayed ACK (~40 ms on Linux), which was most of a request's time here.
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def do_GET(self):  # a health check for wait_http
                self._send(200, {"status": "ok"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)))
                texts = body.get("input", [])
                texts = [texts] if isinstance(texts, str) else texts
                model = str(body.get("model", ""))
                dims = int(body.get("dimensions") or server.dimensions)
                # Slept before answering, so a client killed mid-request has a request surely in flight.
                server.sleep()
                b64 = body.get("encoding_format") == "base64"
                data = []
                for i, t in enumerate(texts):
                    v = vector(model, t, dims)
                    data.append({"object": "embedding", "index": i,
                                 "embedding": base64.b64encode(v.tobytes()).decode() if b64 else v.tolist()})
                with server.lock:
                    server.requests += 1
                    server.texts += len(texts)
                    server.inputs.append(texts)
                self._send(200, {"object": "list", "data": data, "model": model,
                                 "usage": {"prompt_tokens": sum(len(t.split()) for t in texts),
                                           "total_tokens": sum(len(t.split()) for t in texts)}})

            def _send(self, status: int, payload: dict):
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, name="embedding-server", daemon=True)

    def sleep(self) -> None:
        if self.delay > 0:
            threading.Event().wait(self.delay)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--delay", type=float, default=0.2, help="seconds slept per request")
    p.add_argument("--dimensions", type=int, default=64)
    a = p.parse_args(argv)
    with EmbeddingServer(dimensions=a.dimensions, delay=a.delay, port=a.port) as s:
        print(f"serving {s.url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
