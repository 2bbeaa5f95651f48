# syntax=docker/dockerfile:1
# bluegreen: the image that deploy/ runs. Multi-stage: wheels are built with a compiler in the
# first stage; the final stage has no compiler, runs as a non-root user, and starts `bluegreen run`.

FROM python:3.11-slim-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY controller ./controller
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="bluegreen" \
      org.opencontainers.image.description="Blue-green traffic switch for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bluegreen
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels bluegreen \
 && rm -rf /wheels
# The process tunes malloc itself at start-up (controller/tuning.py); nothing to set here.
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["bluegreen", "run"]
CMD ["--config", "/etc/bluegreen/bluegreen.yaml"]
