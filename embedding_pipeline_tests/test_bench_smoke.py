"""The benchmark harness runs end to end at toy size and writes results of the documented shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_write_benchmark_writes_results_and_report(tmp_path):
    """`make bench` must keep producing results.json and the Markdown table the docs link to."""
    out, doc = tmp_path / "results.json", tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--only", "write_vs_copy", "--only", "drift", "--only", "scaling",
         "--out", str(out), "--doc", str(doc)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert isinstance(results["write_vs_copy"], float) and results["write_vs_copy"] > 0
    for key in ("reembed_vs_encode", "rss_1m_vs_10k", "incremental_vs_full", "peer_ratio_defaults", "peer_ratio_best"):
        assert key in results
    for key in ("drift_version_vs_groupby", "drift_full_vs_sql", "drift_incremental_vs_full"):
        assert isinstance(results[key], float) and results[key] > 0, results["details"].get("drift")
    drift = results["details"]["drift"]
    assert drift["incremental_result"]["mode"] == "incremental"  # the premise held: it did not fall back
    assert drift["incremental_result"]["stale"] == drift["full_result"]["stale"] == drift["edited_rows"]
    assert {"machine", "date", "command", "details", "gpu", "goals"} <= set(results)
    assert results["machine"]["nproc"] >= 1 and "postgres" in results["machine"]
    # scaling: every pass ran to the end (the bench imports the engine; a moved module must fail here)
    assert isinstance(results["rss_1m_vs_10k"], float), results["details"].get("scaling")
    assert all(p["rows"] == p["source_rows"] and not p["time_boxed"] for p in results["details"]["scaling"]["points"])
    details = results["details"]["write_vs_copy"]
    assert details["raw_copy_rows_per_s"]["n"] == details["fair_copy_rows_per_s"]["n"] == 1
    assert details["engine_runs"]["1000"][0]["rows"] == 3000  # every row written, not time-boxed
    text = doc.read_text()
    assert "| `write_vs_copy` |" in text and "--only write_vs_copy" in text
