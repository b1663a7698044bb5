# edged on x86_64 (CPU, or an NVIDIA GPU through the gpu extra): the image for
# deploy/kubernetes/overlays/cpu and overlays/gpu. Dockerfile.l4t is the Jetson one.
#
# Multi-stage: the builder compiles nothing but keeps pip, its caches and the source tree out of
# the runtime image. The image holds the code and the model packs (Moonshine, Piper's Joe,
# Silero); models are deployed at start (`edged init`, the pod's init container) into the
# /models volume, so the image is the same on every machine and the deployment fits the node.
#
#   docker build -t edged:cpu .                       # ONNX Runtime on the CPU
#   docker build --build-arg EXTRAS=models,gpu -t edged:gpu .
#   docker run -d -p 50051:50051 -p 8002:8002 -v edged-models:/models edged:cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=models
COPY . /src
RUN python -m venv /opt/edged/.venv \
    && /opt/edged/.venv/bin/pip install --no-cache-dir "/src[${EXTRAS}]" \
    && cp /src/config.sh /opt/edged/config.sh

FROM ${PYTHON_IMAGE}
# libsndfile for soundfile; nothing else: espeak-ng comes as a wheel (espeakng-loader).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /models --shell /usr/sbin/nologin edged \
    && mkdir -p /models /etc/edged && chown edged /models
COPY --from=builder /opt/edged /opt/edged
# The container's config.sh: the shipped one, with the model repository in the volume. Kubernetes
# mounts its ConfigMap over /etc/edged/config.sh.
RUN printf '%s\n' \
    '# edged in a container: the shipped settings, the model repository in the /models volume.' \
    'source /opt/edged/config.sh' \
    'model_loc="/models"' > /etc/edged/config.sh
ENV EDGED_CONFIG=/etc/edged/config.sh PATH=/opt/edged/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
VOLUME /models
EXPOSE 50051 8002
HEALTHCHECK --interval=30s --timeout=10s --start-period=5m --retries=3 CMD ["edged", "health"]
# Outside Kubernetes one container does both steps; in a pod the init container runs `edged init`.
ENTRYPOINT ["sh", "-c", "edged init || echo 'edged: some models were not deployed (see above)' >&2; exec edged start"]
