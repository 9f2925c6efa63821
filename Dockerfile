# naiad's container image, for CPUs or for NVIDIA GPUs. From the repository's root:
#   docker build -t naiad:0.1.0-cpu .
#   docker build -t naiad:0.1.0-cuda --build-arg FLAVOR=cuda .
# and run it with a model repository mounted at /models (docs/deploy.md):
#   docker run --rm -p 8000-8002:8000-8002 --shm-size=1g -v "$PWD/model_repository:/models:ro" naiad:0.1.0-cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cpu: PyTorch's CPU build from PyTorch's own index, ONNX Runtime, XGBoost without its CUDA parts.
# cuda: PyPI's PyTorch, which is the CUDA build and brings the CUDA libraries it needs as packages (no
# CUDA base image is needed: the NVIDIA container runtime adds the driver), onnxruntime-gpu, and
# XGBoost with CuPy.
ARG FLAVOR=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY daemon ./daemon
COPY backends ./backends
COPY batching ./batching
COPY ensembles ./ensembles
COPY clients ./clients
RUN python -m venv /opt/naiad
RUN case "$FLAVOR" in \
      cpu) /opt/naiad/bin/pip install "torch==$TORCH_VERSION" --index-url "$TORCH_CPU_INDEX" \
           && /opt/naiad/bin/pip install ".[onnxruntime]" xgboost-cpu ;; \
      cuda) /opt/naiad/bin/pip install "torch==$TORCH_VERSION" ".[onnxruntime-gpu,xgboost-gpu]" ;; \
      *) echo "FLAVOR must be cpu or cuda, not '$FLAVOR'" >&2; exit 1 ;; \
    esac

# The image that runs: the virtualenv alone on a slim Python, no compilers, no pip cache, not root.
FROM ${PYTHON_IMAGE}
COPY --from=build /opt/naiad /opt/naiad
RUN useradd --uid 1000 --user-group --create-home naiad
ENV PATH=/opt/naiad/bin:$PATH PYTHONUNBUFFERED=1
# numeric, so that Kubernetes' runAsNonRoot can check it
USER 1000:1000
WORKDIR /home/naiad
# HTTP, gRPC, metrics
EXPOSE 8000 8001 8002
# SIGTERM starts the graceful shutdown: readiness turns false, requests in flight finish within
# --exit-timeout-secs. `docker stop` waits 10 s before it kills: 7 s for requests leave time to answer
# them and unload the models. Give longer requests `docker run --stop-timeout S` and a larger flag.
STOPSIGNAL SIGTERM
ENTRYPOINT ["naiad"]
CMD ["serve", "--model-repository=/models", "--exit-timeout-secs=7"]
