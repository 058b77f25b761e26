"""What a re-embed will cost before it runs: tokens, price and time, per source and space.

Tokens are counted on a sample of the rows still to embed (the first ``sample`` in key order)
with the provider's own counter: the model's tokenizer for local models, else a stated
characters-per-token estimate, calibrated by the space's last smoke run when the server
reported ``usage`` for the sentinel texts. Price is ``price_per_million_tokens`` from the space's
config (none for local models). Time comes from the smoke's batch throughput in tokens per
second, so a space never embedded before still gets one; the run's own progress line gives the
real ETA once it starts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from embedding_pipeline.embeddings import queries
from embedding_pipeline.embeddings.reembed import pending_rows
from embedding_pipeline.spaces.model import SpaceTable
from embedding_pipeline.spaces.source import SourceTable

SAMPLE_ROWS = 2000


@dataclass
class CostEstimate:
    source: str
    space: str
    rows: int  # rows to embed (missing or stale), of the shard when one is given
    sampled: int
    tokens: int
    method: str  # 'tokenizer', 'usage-calibrated chars/token', 'chars/token estimate'
    price_per_million: float | None
    price: float | None  # in the price's currency; None for local models
    seconds: float | None  # None: no smoke throughput measured yet
    rate_note: str
    shard: str = ""  # "K/N" when the estimate is of one shard's pass

    def to_json(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        price = "no price configured" if self.price is None else f"~{self.price:,.2f} at {self.price_per_million:g}/M"
        time = f"~{self.seconds / 60:,.1f} min" if self.seconds is not None else "time unknown"
        shard = f" shard {self.shard}" if self.shard else ""
        return (f"{self.source} -> {self.space}{shard}: {self.rows:,} rows, ~{self.tokens:,} tokens ({self.method}), "
                f"{price}, {time} ({self.rate_note})")


def _calibrated_ratio(smoke: dict | None) -> float | None:
    """Characters per token measured on the smoke texts, when the server reported its usage."""
    if smoke and smoke.get("usage_tokens") and smoke.get("chars"):
        return smoke["chars"] / smoke["usage_tokens"]
    return None


def estimate(conn, source: SourceTable, table: SpaceTable, provider, *, smoke: dict | None = None,
             sample: int = SAMPLE_ROWS, shard: tuple[int, int] | None = None) -> CostEstimate:
    """The cost of bringing ``table`` (or one shard of it) up to date; reads only (the sample and one count).

    A shard run estimates its own rows: counted over the whole table, each of N shard runs would
    report N times the tokens and price of the pass it makes.
    """
    space = table.space
    pending = pending_rows(source, table, shard=shard)
    rows = conn.execute(queries.count_pending(pending)).fetchone()[0]
    texts = [r[0] for r in conn.execute(queries.sample_pending(pending),
                                        (sample,)).fetchall()]
    ratio = _calibrated_ratio(smoke)
    if provider is None or (ratio is not None and space.transport == "openai"):
        per = ratio or 4.0
        counted, method = math.ceil(sum(len(t) for t in texts) / per), (
            f"usage-calibrated chars/token ({per:.2f})" if ratio else "chars/token estimate (4.0)")
    else:
        counted, method = provider.count_tokens(texts)
    tokens = round(counted * rows / len(texts)) if texts else 0
    price_per_m = space.price_per_million_tokens
    price = tokens / 1e6 * price_per_m if price_per_m is not None else None
    seconds, note = None, "no smoke run yet: `embedding-pipeline smoke --space " + space.name + "` measures it"
    if smoke and smoke.get("ok") and smoke.get("tokens") and smoke.get("batch_ms"):
        rate = smoke["tokens"] / (smoke["batch_ms"] / 1000)
        seconds, note = tokens / rate, f"smoke batch throughput {rate:,.0f} tokens/s"
    return CostEstimate(source.name, space.name, rows, len(texts), tokens, method, price_per_m,
                        None if price is None else round(price, 4), seconds, note,
                        f"{shard[0]}/{shard[1]}" if shard else "")
