# The Triton image: NVIDIA's tritonserver 24.10 (Triton 2.51, the release of the pinned tritonclient)
# with this package's server side installed for the Python-backend models.
# Build from the repository root:  docker build -f deploy/docker/triton.Dockerfile -t triton-inpaint-triton .
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# The package runs on Python 3.11 (requires-python); the image's Ubuntu 22.04 has 3.10. deadsnakes'
# 3.11 comes with the shared libpython the Python backend stub links.
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libpython3.11 \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/triton-inpaint \
    PATH=/opt/triton-inpaint/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python3.11 -m venv "$VIRTUAL_ENV"

COPY pyproject.toml README.md /src/
COPY triton_inpaint /src/triton_inpaint
COPY export /src/export
COPY client /src/client
COPY gateway /src/gateway
COPY model_repository /src/model_repository
# Which torch build: the CPU one (default) when torch only runs the schedulers' tensor maths (the cpu
# runtime), which keeps the image gigabytes smaller. The GPU runtimes need a CUDA 12 build (the
# container's CUDA): the denoise model keeps its tensors on the GPU, and gpu-torch runs the networks, e.g.
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# `export tensorrt` builds engines inside this image on the serving GPU: it needs TensorRT's Python
# bindings of the container's TensorRT (10.5 in 24.10), from NVIDIA's package index, e.g.
#   --build-arg TENSORRT_VERSION=10.5.0
ARG TENSORRT_VERSION=""
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX_URL" "/src[server]" \
    && if [ -n "$TENSORRT_VERSION" ]; then \
        pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com "tensorrt-cu12==$TENSORRT_VERSION"; \
    fi \
    && rm -rf /src

# NVIDIA's Python backend runs its stub with the interpreter the stub was built for (3.10). The
# nvidia-pytriton wheel carries the stub of the same Triton release built for 3.11: put it in place.
RUN stub="$(python -c 'import pathlib, pytriton; print(pathlib.Path(pytriton.__file__).parent / "tritonserver/python_backend_stubs/3.11/triton_python_backend_stub")')" \
    && install -m 0755 "$stub" /opt/tritonserver/backends/python/triton_python_backend_stub

# NVIDIA's image has this non-root user (uid 1000).
USER triton-server
EXPOSE 8000 8001 8002
# ``serve`` runs tritonserver under the model-process supervisor (a dead stub is reloaded, a dead server
# started again) with this package's defaults; the chart passes the repository, addresses and ports.
ENTRYPOINT ["triton-inpaint", "serve", "--tritonserver", "/opt/tritonserver/bin/tritonserver", "--backend-directory", "/opt/tritonserver/backends"]
