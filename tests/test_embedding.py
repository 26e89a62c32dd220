"""The default model served over HTTP matches sentence-transformers' own embeddings (cosine >= 0.999)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from batchery.models import minilm_export
from batchery.models.embedding import SentenceEmbedder
from batchery.testing import running_server

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "batchery batches requests dynamically.",
    "Short.",
    "A considerably longer sentence, with punctuation; numbers like 42 and 3.14, and unusual words: zymurgy!",
    "Ünïcödé text and emoji 🚀 still embed.",
]
#: More texts than one forward pass takes (`SentenceEmbedder.sub_batch`), each a different length, longest first.
MIXED = [f"{SENTENCES[i % len(SENTENCES)]} {'and more words ' * (19 - i)}".strip() for i in range(20)]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_export.source_dir()), device="cpu")
    embeddings: np.ndarray = model.encode(SENTENCES + MIXED, normalize_embeddings=True)
    return embeddings


def cosines(served: np.ndarray, reference: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(served, axis=1) * np.linalg.norm(reference, axis=1)
    result: np.ndarray = (served * reference).sum(axis=1) / norms
    return result


async def test_served_embeddings_match_sentence_transformers(reference: np.ndarray) -> None:
    async with running_server([SentenceEmbedder()]) as server, httpx.AsyncClient(base_url=server.url) as http:
        batch = await http.post("/v1/models/all-minilm-l6-v2/predict", json={"inputs": SENTENCES})
        single = await http.post("/v1/models/all-minilm-l6-v2/predict", json={"input": SENTENCES[3]})
        bad = await http.post("/v1/models/all-minilm-l6-v2/predict", json={"inputs": ["fine", ""]})
        wrong_type = await http.post("/v1/models/all-minilm-l6-v2/predict", json={"input": 7})
        mixed = await http.post("/v1/models/all-minilm-l6-v2/predict", json={"inputs": MIXED})
    assert batch.status_code == 200
    served = np.array(batch.json()["outputs"], dtype=np.float32)
    assert served.shape == (len(SENTENCES), 384)
    assert cosines(served, reference[: len(SENTENCES)]).min() >= 0.999
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-4)
    one = np.array(single.json()["output"], dtype=np.float32)
    assert float(one @ reference[3]) >= 0.999
    assert bad.status_code == 422
    assert "input 1: the text is empty" in bad.json()["error"]["message"]
    assert wrong_type.status_code == 422
    assert "expected a string" in wrong_type.json()["error"]["message"]
    # One batch of 20 lengths runs as length-sorted forward passes; each text still gets its own embedding.
    assert mixed.status_code == 200
    assert cosines(np.array(mixed.json()["outputs"], dtype=np.float32), reference[len(SENTENCES) :]).min() >= 0.999


def test_sorted_forward_passes_give_the_embeddings_of_one_padded_pass() -> None:
    embedder = SentenceEmbedder()
    embedder.setup("cpu")
    sorted_passes = np.array(embedder.predict(MIXED))
    embedder.sub_batch = len(MIXED)
    one_pass = np.array(embedder.predict(MIXED))
    assert sorted_passes.shape == one_pass.shape == (len(MIXED), 384)
    assert np.abs(sorted_passes - one_pass).max() < 1e-5


def test_a_corrupt_cached_graph_is_exported_again(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHERY_CACHE_DIR", str(tmp_path))
    first = minilm_export.onnx_path()
    assert first.is_file()
    first.write_bytes(b"not an onnx graph")
    again = minilm_export.onnx_path()
    assert again == first
    assert again.stat().st_size > 1_000_000


def test_lanes_exporting_at_once_into_an_empty_cache_share_one_export(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fresh machine: every lane of the default model calls onnx_path() at the same moment.
    monkeypatch.setenv("BATCHERY_CACHE_DIR", str(tmp_path))
    with ThreadPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(lambda _: minilm_export.onnx_path(), range(3)))
    assert len(set(paths)) == 1
    assert paths[0].stat().st_size > 1_000_000
    assert not list(paths[0].parent.glob("*.tmp"))
