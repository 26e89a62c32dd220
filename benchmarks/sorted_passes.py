"""One padded forward pass per batch against the length-sorted passes `SentenceEmbedder.predict` runs.

One lane with one intra-op thread (a lane of the default layout), random batches of the benchmark's sentences
(as the load generator draws them), alternating rounds, best round per variant.

    python -m benchmarks.sorted_passes [--rounds 3] [--batches 60] [--out benchmarks/results/sorted-passes.json]
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import Any

import orjson

from batchery import cores
from batchery.models.embedding import SentenceEmbedder

SENTENCES = Path(__file__).with_name("sentences.txt")


def one_pass(embedder: SentenceEmbedder, batch: list[str]) -> None:
    embedder.sub_batch = len(batch)
    embedder.predict(batch)


def sorted_passes(size: int) -> Any:
    def run(embedder: SentenceEmbedder, batch: list[str]) -> None:
        embedder.sub_batch = size
        embedder.predict(batch)

    return run


def padding_share(embedder: SentenceEmbedder, batches: list[list[str]]) -> float:
    """The share of one padded pass's tokens that are padding, over `batches`."""
    padded = real = 0
    for batch in batches:
        lengths = embedder.count_tokens(batch)
        padded += max(lengths) * len(lengths)
        real += sum(lengths)
    return 1 - real / padded


def measure(rounds: int, count: int, sizes: list[int]) -> dict[str, Any]:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    texts = SENTENCES.read_text().splitlines()
    rng = random.Random(2)
    with cores.granted(1):
        embedder = SentenceEmbedder()
        embedder.setup("cpu")
        variants = {"one padded pass": one_pass, "sorted passes of 8": sorted_passes(8), "of 4": sorted_passes(4)}
        results: dict[str, Any] = {}
        for size in sizes:
            batches = [rng.sample(texts, size) for _ in range(count)]
            best: dict[str, float] = {}
            for index in range(rounds):
                order = list(variants.items()) if index % 2 == 0 else list(reversed(variants.items()))
                for name, run in order:
                    start = time.perf_counter()
                    for batch in batches:
                        run(embedder, batch)
                    rate = count * size / (time.perf_counter() - start)
                    best[name] = max(best.get(name, 0.0), rate)
            results[f"b{size}"] = {
                "padding_share": round(padding_share(embedder, batches), 3),
                "sentences_per_s": {name: round(rate, 1) for name, rate in best.items()},
            }
            print(size, results[f"b{size}"], flush=True)
    return {"rounds": rounds, "batches": count, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sorted-passes.json"))
    args = parser.parse_args()
    result = measure(args.rounds, args.batches, [8, 16, 32])
    result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
