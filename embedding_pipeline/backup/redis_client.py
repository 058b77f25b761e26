"""A minimal, binary-safe RESP2 client and Redis URL parsing.

The project talks to Redis only to inspect it (backup sampling and verification), so a hundred
lines of RESP replace a client-library dependency; redis-cli does the heavy lifting.
"""

from __future__ import annotations

import socket
import ssl
from urllib.parse import unquote, urlsplit


class RedisReplyError(Exception):
    pass


class RedisClient:
    """Just enough RESP2 to inspect a server; binary-safe, so values are compared byte for byte."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, tls: bool = False, timeout: float = 10.0):
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        self._sock = sock
        self._file = sock.makefile("rb")
        if password:
            self.call("AUTH", *([username] if username else []), password)
        if db:
            self.call("SELECT", db)

    @classmethod
    def from_url(cls, url: str, **kwargs) -> "RedisClient":
        p = parse_url(url)
        return cls(p["host"], p["port"], db=p["db"], username=p["username"], password=p["password"],
                   tls=p["tls"], **kwargs)

    def call(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self._sock.sendall(b"".join(parts))
        return self._read()

    def _read(self):
        line = self._file.readline()
        if not line:
            raise ConnectionError("Redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisReplyError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind in (b"$", b"*"):
            n = int(rest)
            if n < 0:
                return None
            if kind == b"$":
                return self._file.read(n + 2)[:-2]
            return [self._read() for _ in range(n)]
        raise ConnectionError(f"unexpected RESP reply type {kind!r}")

    def close(self) -> None:
        for closer in (self._file.close, self._sock.close):
            try:
                closer()
            except OSError:
                pass

    def __enter__(self) -> "RedisClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_url(url: str) -> dict:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}: use redis:// or rediss://")
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise ValueError(f"the Redis URL's database must be a number, got {db_text!r}")
    username = unquote(parts.username) if parts.username else None
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 6379
    display_host = f"[{host}]" if ":" in host else host
    return {
        "host": host, "port": port, "db": int(db_text),
        "username": username if username not in (None, "", "default") else None,
        "password": unquote(parts.password) if parts.password else None,
        "tls": parts.scheme == "rediss",
        # What we print and store: the same server without credentials.
        "clean_url": f"{parts.scheme}://{display_host}:{port}/{db_text}",
    }
