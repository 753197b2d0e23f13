# syntax=docker/dockerfile:1
# GPU image for the precompute job (`soundscape precompute`): onnxruntime-gpu (CUDA 12, cuDNN 9)
# and faiss-gpu-cu12 in place of the CPU wheels.
#
#   docker build -f docker/precompute.Dockerfile -t soundscape-tiles/precompute:dev .
#   docker run --rm --gpus 1 -v "$PWD/data/demo:/data" soundscape-tiles/precompute:dev \
#       --imagery /data/imagery/bluemarble.tif --bundle /data/bundle --levels 0-7 --fusion-levels 0-6 \
#       --out /data/store --overwrite
#
# Ubuntu 24.04's python3 is 3.12, which satisfies requires-python >= 3.11 (the locks are universal:
# their markers pick the lines for 3.12). The runtime flavour of the CUDA image carries the CUDA 12
# libraries and cuDNN 9 that onnxruntime-gpu's CUDA provider loads.

# ---- base: CUDA runtime + the distribution's Python ----
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS base

ARG DEBIAN_FRONTEND=noninteractive
# Apt packages are not version-pinned (DL3008 is ignored in .hadolint.yaml, see there).
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*

# ---- builder: venv with the project and the GPU extra ----
FROM base AS builder

ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-venv \
 && rm -rf /var/lib/apt/lists/*

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The locked core+gpu+ray set (locks/gpu.txt, scripts/lock.sh makes it; ray for `--engine ray`) holds the CPU wheels onnxruntime
# and faiss-cpu of the core and the gpu extra's onnxruntime-gpu and faiss-gpu-cu12. Each pair installs
# into the same import package (`onnxruntime`, `faiss`), so whichever was unpacked last owns the files,
# and uninstalling the CPU wheel deletes files the GPU wheel shares. Hence: uninstall the CPU wheels,
# then force-reinstall the GPU wheels (at their locked versions, without touching their dependencies)
# so their files are whole.
WORKDIR /src
COPY locks/gpu.txt locks/
RUN pip install --no-cache-dir -r locks/gpu.txt \
 && grep -E '^(onnxruntime-gpu|faiss-gpu-cu12)==' locks/gpu.txt > /tmp/gpu-wheels.txt \
 && test "$(wc -l < /tmp/gpu-wheels.txt)" -eq 2 \
 && pip uninstall --yes onnxruntime faiss-cpu \
 && pip install --no-cache-dir --no-deps --force-reinstall -r /tmp/gpu-wheels.txt
# The context is filtered by .dockerignore (no .venv, data/, .git, tests/).
COPY . .
RUN pip install --no-cache-dir --no-deps . \
 && python -c "import onnxruntime as ort; p = ort.get_available_providers(); assert 'CUDAExecutionProvider' in p, p" \
 && soundscape precompute --help >/dev/null

# ---- runtime ----
FROM base AS runtime

LABEL org.opencontainers.image.title="soundscape-tiles precompute" \
      org.opencontainers.image.description="GPU job that embeds imagery cells into a soundscape store" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ubuntu:24.04 ships a user `ubuntu` with uid 1000; replace it with our own uid/gid 1000, the usual
# owner of a developer's bind-mounted ./data on the host (the job writes the store there).
RUN userdel --remove ubuntu \
 && groupadd --gid 1000 soundscape \
 && useradd --uid 1000 --gid soundscape --no-log-init --create-home --shell /usr/sbin/nologin soundscape \
 && mkdir -p /data \
 && chown soundscape:soundscape /data

COPY --from=builder /opt/venv /opt/venv

WORKDIR /data
USER 1000:1000
VOLUME ["/data"]

ENTRYPOINT ["soundscape", "precompute"]
CMD ["--help"]
