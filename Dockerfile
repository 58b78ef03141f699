# Image of the MetaNet one-shot concept server, for CPU or GPU hosts from this one file.
# Build and run (Docker, Podman, Buildah): docs/CLIENT.md, "Deploy in a container".
#   CPU:  docker build -t metanet-server:cpu .
#   GPU:  docker build --build-arg BASE=nvidia/cuda:13.0.1-runtime-ubuntu24.04 -t metanet-server:gpu .
# Behind a TLS-intercepting proxy, hand pip the proxy's CA bundle as a build secret (used by the pip
# steps only, never stored in the image): docker build --secret id=pip-ca,src=/path/to/ca-bundle.crt ...
#
# BASE is any Debian or Ubuntu image; python3 comes from its packages. A base that sets CUDA_VERSION
# (NVIDIA's CUDA images do) gets the GPU builds of FAISS and ONNX Runtime; PyPI's torch wheels carry
# their own CUDA libraries either way.
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
# The largest wheels in a layer of their own, at the versions pyproject.toml pins. PyPI's are CUDA
# builds; TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes PyTorch's CPU-only builds instead.
ARG TORCH_INDEX_URL=
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
        $(grep -oE '"torch(vision)?==[^"]+"' pyproject.toml | tr -d '"')

COPY model model
COPY training training
COPY server server
COPY checkpoints checkpoints
# The project depends on the CPU builds of FAISS and ONNX Runtime: on a CUDA base, swap in their GPU builds.
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
    && pip install . \
    && rm -rf build ./*.egg-info \
    && if [ -n "${CUDA_VERSION:-}" ]; then \
        pip uninstall -y faiss-cpu onnxruntime \
        && pip install faiss-gpu==1.15.1 "onnxruntime-gpu[cuda,cudnn]==1.31.1"; \
    fi
# The ONNX export the onnxruntime backend serves, made once here (the app folder is read-only at run time).
RUN python -c "from server.config import ServerSettings as S; from model.onnx_backend import ensure_export; \
s = S(); ensure_export(s.checkpoint, s.onnx_path)"

RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin metanet \
    && mkdir /data \
    && chown metanet:metanet /data
USER metanet

# The task store (SQLite) lives on this volume: keep it across container restarts and upgrades.
VOLUME /data
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# API keys are required: mount a file of "tenant:key" lines at this path (the server will not
# start without it). Add options after the image name, e.g. `--workers 2`; METANET_* variables work too.
ENTRYPOINT ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/data", \
            "--api-keys-file", "/run/secrets/metanet-api-keys"]
