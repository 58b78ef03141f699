# GPU image of the MetaNet one-shot concept server. Build and run: docs/CLIENT.md, "Deploy with Docker on a GPU".
#   docker build -t metanet-server .
#   docker run --gpus all -p 8000:8000 -v metanet-data:/data \
#     -v "$PWD/api-keys:/run/secrets/metanet-api-keys:ro" metanet-server
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

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

# The largest wheels in a layer of their own. PyPI's torch 2.14.1 is a CUDA 13 build.
RUN pip install torch==2.14.1 torchvision==0.29.1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model model
COPY training training
COPY server server
COPY checkpoints checkpoints
# The project depends on the CPU builds of FAISS and ONNX Runtime: swap in their GPU builds.
RUN pip install . \
    && pip uninstall -y faiss-cpu onnxruntime \
    && pip install faiss-gpu==1.15.1 "onnxruntime-gpu[cuda,cudnn]==1.31.1"
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
