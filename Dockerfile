# imgverify as a container image: the Ray Serve application, its pinned dependencies and the local profile's weights.
#
#   docker build -t imgverify:0.1.0-cpu .                          # CPU (torch's CPU wheels, no CUDA libraries)
#   docker build -t imgverify:0.1.0-cuda --build-arg VARIANT=cuda . # GPU (torch's default PyPI wheels, CUDA 13)
#   docker run --rm -p 8000:8000 --shm-size=2g imgverify:0.1.0-cpu # local offline profile on http://127.0.0.1:8000
#
# One Dockerfile with a build argument rather than two files: the two variants differ only in which torch wheel
# pip installs. The default PyPI torch wheel carries its own CUDA runtime, cuDNN and NCCL (the nvidia-* wheels), so
# the CUDA image needs no nvidia/cuda base, only a host NVIDIA driver new enough for CUDA 13 and the NVIDIA
# container toolkit (docker run --gpus all). Everything else is the same file, so the variants cannot drift.
#
# Production (serve_config.yaml, the whole ensemble on GPU fractions) fetches its weights at start, not at build:
#   docker run --gpus all -e IMGVERIFY_FETCH_WEIGHTS=serve_config.yaml -e HF_HUB_OFFLINE=0 -v /models:/models:ro \
#     imgverify:0.1.0-cuda serve run serve_config.yaml
# On Kubernetes see deploy/kuberay/rayservice.yaml (`imgverify deploy kuberay`): KubeRay replaces the entrypoint
# with `ray start`, so there an init container runs `imgverify weights fetch`.
#
# Untested here: this project's machines have no Docker engine. tests/test_deploy_files.py checks this file's text.

# Base image pinned by tag and by the digest of its multi-architecture index. The digest is the one several public
# projects pin for this tag (found in stored public Dockerfiles and docs); it was not re-checked against the
# registry from this machine, which has no network access to it: `docker buildx imagetools inspect
# python:3.11.14-slim-bookworm` shows the current one.
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# cpu or cuda: which torch wheel is installed (see above).
ARG VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMGVERIFY_CACHE=/opt/imgverify/cache \
    HF_HOME=/opt/imgverify/hf \
    HF_HUB_OFFLINE=1 \
    RAY_SERVE_ENABLE_HA_PROXY=1

# wget: the HEALTHCHECK and KubeRay's default pod probes use it. libgl1, libglib2.0-0, libsm6, libxext6: opencv-python
# (pulled in by invisible-watermark) links them. libgomp1: OpenMP for xgboost and scikit-learn.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates wget libgl1 libglib2.0-0 libsm6 libxext6 libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# torch first, in its own layer (the largest; it changes only with the pins). The versions are pyproject.toml's pins
# (tests/test_deploy_files.py checks that they match); `pip install .` below then finds them satisfied.
RUN case "$VARIANT" in \
      cpu) pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1 ;; \
      cuda) pip install torch==2.14.1 torchvision==0.29.1 ;; \
      *) echo "VARIANT must be cpu or cuda, not $VARIANT" >&2; exit 1 ;; \
    esac

# The project, with its pins, installed as a package (not editable); .dockerignore keeps the context to the sources.
COPY . /src
RUN pip install /src \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# A non-root user owns the weights cache and runs the service.
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin imgverify \
    && mkdir -p /app /opt/imgverify/cache /opt/imgverify/hf \
    && cp /src/serve_config.yaml /src/serve_config.local.yaml /app/ \
    && cp /src/docker/entrypoint.sh /usr/local/bin/imgverify-entrypoint \
    && chmod 0755 /usr/local/bin/imgverify-entrypoint \
    && rm -rf /src \
    && chown -R imgverify:imgverify /opt/imgverify /app
WORKDIR /app
USER imgverify

# The local profile's weights, fetched and checked against their pins at build time, so the container starts offline.
RUN HF_HUB_OFFLINE=0 imgverify weights fetch --config serve_config.local.yaml \
    && python -c "import yaml; c = yaml.safe_load(open('serve_config.local.yaml')); c['http_options']['host'] = '0.0.0.0'; yaml.safe_dump(c, open('serve_config.container.yaml', 'w'), sort_keys=False)"

EXPOSE 8000
# /healthz answers 200 only when every enabled detector is loaded; the first start loads models (minutes on CPU).
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD wget -q -O /dev/null http://127.0.0.1:8000/healthz || exit 1

# IMGVERIFY_FETCH_WEIGHTS=CONFIG: `imgverify weights fetch --config CONFIG` before the command (production).
ENTRYPOINT ["imgverify-entrypoint"]
# The local profile, listening on all of the container's interfaces (serve_config.local.yaml binds 127.0.0.1). Its Ray
# is private to the container (only port 8000 is published), so it runs without Ray's token auth, as the quickstart
# does; the image itself leaves RAY_AUTH_MODE unset, so a Ray cluster built from it (KubeRay) keeps Ray's default.
CMD ["env", "RAY_AUTH_MODE=disabled", "serve", "run", "serve_config.container.yaml"]
