# Container image for llm-grpc-server: CUDA runtime base + the package, non-root, default model baked in.
#
#   docker build -t ghcr.io/example/llm-grpc-server:0.1.0 .
#   docker run --gpus all -p 50051:50051 -p 8000:8000 -p 9090:9090 ghcr.io/example/llm-grpc-server:0.1.0
#   docker run -e LLM_BACKEND=numpy -p 50051:50051 ghcr.io/example/llm-grpc-server:0.1.0   # no GPU
#
# Consistent with helm/llm-server: uid/gid 10001 (podSecurityContext), HOME=/home/app (its .cache is an
# emptyDir there), ports 50051/8000/9090 (config.port/httpPort/metricsPort), ENTRYPOINT `python -m service`
# with CMD/args `serve`, every setting an LLM_* variable. The root filesystem can be read-only: nothing is
# written outside /tmp, $HOME/.cache and LLM_KERNEL_CACHE_DIR.
#
# PyCUDA compiles kernels/*.cu with nvcc when the server starts (cached in LLM_KERNEL_CACHE_DIR), so the
# runtime stage carries nvcc, the CUDA headers and a host compiler on top of the runtime base.

ARG CUDA_VERSION=12.8.1
ARG CUDA_PKG=12-8
ARG UBUNTU=ubuntu24.04

# ---- build: a venv with the package's dependencies and pycuda (compiled against the CUDA headers) ----
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu/CUDA apt versions move with the base image tag, which is what pins them (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY kernels ./kernels
COPY protos ./protos
# Editable install: the code stays in /app, so service/backends/cuda_runtime.py finds /app/kernels.
RUN pip install -e ".[cuda]"
# The default model (SmolLM2-135M-Instruct, 98 MB) baked in at build time; no download when a pod starts.
# Its own layer, so a failed download does not redo the pip install above (DL3059).
# hadolint ignore=DL3059
RUN python -m service pull --model-cache-dir /opt/llm/models --quiet

# ---- runtime ----
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
ARG CUDA_PKG
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini g++ \
      cuda-nvcc-${CUDA_PKG} cuda-cudart-dev-${CUDA_PKG} \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 app \
 && useradd --uid 10001 --gid 10001 --home-dir /home/app --create-home --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY --from=build --chown=10001:10001 /opt/llm/models /opt/llm/models
ENV PATH=/opt/venv/bin:/usr/local/cuda/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/app \
    LLM_MODEL=/opt/llm/models/SmolLM2-135M-Instruct.Q4_1.gguf \
    LLM_KERNEL_CACHE_DIR=/home/app/.cache/llm-grpc-server/kernels \
    LLM_HOST=0.0.0.0 \
    LLM_PORT=50051 \
    LLM_HTTP_PORT=8000 \
    LLM_METRICS_PORT=9090
WORKDIR /app
USER 10001:10001
EXPOSE 50051 8000 9090
# tini is PID 1: it forwards SIGTERM to the server (which drains for LLM_GRACE_S) and reaps nvcc children.
ENTRYPOINT ["tini", "--", "python", "-m", "service"]
CMD ["serve"]
