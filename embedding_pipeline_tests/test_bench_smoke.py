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
        [sys.executable, "-m", "bench.run", "--quick", "--only", "write_vs_copy",
         "--out", str(out), "--doc", str(doc)],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert isinstance(results["write_vs_copy"], float) and results["write_vs_copy"] > 0
    for key in ("reembed_vs_encode", "rss_1m_vs_10k", "incremental_vs_full", "drift_vs_groupby", "peer_ratio"):
        assert key in results
    assert {"machine", "date", "command", "details", "gpu", "goals"} <= set(results)
    assert results["machine"]["nproc"] >= 1 and "postgres" in results["machine"]
    details = results["details"]["write_vs_copy"]
    assert details["raw_copy_rows_per_s"]["n"] == 1
    assert "engine_sql" in details["variants"] and "Insert on" in details["explain_engine_upsert"]
    text = doc.read_text()
    assert "| `write_vs_copy` |" in text and "--only write_vs_copy" in text
