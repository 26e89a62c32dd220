"""Load-test a batchery server with locust.

    pip install locust
    locust -f examples/locustfile.py --host http://127.0.0.1:8000                    # web UI on :8089
    locust -f examples/locustfile.py --host http://127.0.0.1:8000 --headless -u 64 -r 16 -t 1m

Settings, as environment variables: LOCUST_MODEL (default all-minilm-l6-v2, the default model),
LOCUST_API_KEY (sent as X-API-Key when the server uses keys). Many users sending one input each is the
traffic dynamic batching is for; the batch task sends several inputs in one request, as a bulk job would.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, task

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Batching many small requests keeps the CPU busy with useful work.",
    "A replica that drains finishes what it started before it exits.",
    "Queue depth is the signal the autoscaler reads.",
    "Embeddings map sentences to points that are close when meanings are.",
    "Rate limits hold across replicas when they share Redis.",
    "The dashboard shows throughput, latency and the cache hit rate.",
    "Kubernetes sends SIGTERM, then waits for the grace period.",
]


class BatcheryUser(FastHttpUser):
    """One client: mostly single inputs, sometimes a small batch, now and then the model list."""

    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.model = os.environ.get("LOCUST_MODEL", "all-minilm-l6-v2")
        key = os.environ.get("LOCUST_API_KEY")
        self.headers = {"X-API-Key": key} if key else {}

    @task(20)
    def one_input(self) -> None:
        body = {"input": random.choice(SENTENCES)}
        self.client.post(
            f"/v1/models/{self.model}/predict", json=body, headers=self.headers, name="/v1/models/[model]/predict"
        )

    @task(2)
    def small_batch(self) -> None:
        body = {"inputs": random.sample(SENTENCES, 4)}
        self.client.post(
            f"/v1/models/{self.model}/predict", json=body, headers=self.headers, name="/v1/models/[model]/predict (4)"
        )

    @task(1)
    def list_models(self) -> None:
        self.client.get("/v1/models", headers=self.headers)
