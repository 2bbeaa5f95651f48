# syntax=docker/dockerfile:1
# bluegreen: the image that deploy/ runs.
#
#   docker build -t bluegreen:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE=https://example.org/your/bluegreen.git .
#
# Two stages. `build` turns the project and every dependency into wheels. Its compiler is what
# compiles the proxy's hot path with mypyc (setup.py), and it builds any dependency that lacks a
# prebuilt wheel for the platform (linux/amd64 and linux/arm64 have them all). The final stage
# installs those wheels with no index and no compiler, checks that the compiled proxy is what
# runs, runs as uid 10001, and starts `bluegreen run`. tests/test_packaging.py runs the same pip
# steps in a clean venv and checks this file's final stage, since the test machine has no Docker
# engine.

FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the wheel is built from; .dockerignore keeps everything else out of the context.
COPY pyproject.toml setup.py README.md ./
COPY proxy ./proxy
COPY controller ./controller
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="bluegreen" \
      org.opencontainers.image.description="Blue-green traffic switch for Kubernetes: an asyncio reverse proxy that routes by colour and switches instantly" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
# A fixed uid/gid so that the Deployment's runAsUser/runAsNonRoot and fsGroup can name them.
RUN groupadd --system --gid 10001 bluegreen \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin bluegreen
# The wheels are bind-mounted from the build stage rather than copied, so no layer keeps them.
# pip, setuptools and wheel are removed afterwards: nothing installs anything at run time, and
# what is not in the image cannot turn up in a vulnerability scan.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels \
      --root-user-action=ignore --disable-pip-version-check bluegreen \
 && pip uninstall --yes --root-user-action=ignore pip setuptools wheel
# setup.py falls back to the pure-Python proxy when compiling fails; an image must not, so the
# build stops here unless the installed program says it runs compiled.
RUN bluegreen --version | grep -F "(compiled,"
# `bluegreen --version` and bluegreen_build_info report it.
ENV BLUEGREEN_REVISION="${REVISION}"
# Bytecode is compiled by pip at install time; nothing needs writing at run time, so the
# Deployment can set readOnlyRootFilesystem. The process tunes malloc itself at start-up
# (controller/tuning.py) and handles SIGTERM as PID 1 (it installs its own handler and starts
# no children), so no init wrapper is needed.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# 8080: the proxy (live and preview traffic). 9090: admin (/healthz /readyz /metrics /status).
EXPOSE 8080 9090
# No HEALTHCHECK: Kubernetes ignores it. The Deployment probes /healthz (liveness) and /readyz
# (readiness) on the admin port instead.
ENTRYPOINT ["bluegreen", "run"]
# A local file by default; deploy/ passes `--configmap NAMESPACE/NAME` instead.
CMD ["--config", "/etc/bluegreen/bluegreen.yaml"]
