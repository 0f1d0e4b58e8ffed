# The one LLM-Sentinel image: `sentinel sidecar`, `sentinel aggregator` and `sentinel webhook` are its
# subcommands (ENTRYPOINT sentinel; Kubernetes manifests pass the subcommand as args).
#
#   docker build -t llm-sentinel:dev .
#
# Runtime dependencies only (no dev extra), in a virtualenv built in a first stage and copied into a
# clean python:3.11-slim; the runtime packages only (no loadtest/: a development tool, see pyproject.toml); runs as the numeric non-root UID 65532, so Pod Security "restricted"
# (runAsNonRoot) can verify it without a passwd entry.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/sentinel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sentinel ./sentinel
COPY sidecar ./sidecar
COPY aggregator ./aggregator
COPY webhook_injector ./webhook_injector
RUN /opt/sentinel/bin/pip install . \
 && /opt/sentinel/bin/sentinel --help > /dev/null

FROM python:3.11-slim
COPY --from=build /opt/sentinel /opt/sentinel
ENV PATH=/opt/sentinel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Default home of the spool and journal; Kubernetes mounts volumes over it.
RUN mkdir -p /var/lib/sentinel \
 && chown 65532:65532 /var/lib/sentinel
WORKDIR /var/lib/sentinel
USER 65532:65532
# 4317 OTLP/gRPC, 4318 OTLP/HTTP, 8081 sidecar ops (/metrics, /healthz, /readyz),
# 9090 aggregator (ingest, REST API + SSE, web page, ops), 9091 aggregator gRPC AlertService,
# 8443 webhook (HTTPS).
EXPOSE 4317 4318 8081 9090 9091 8443
ENTRYPOINT ["sentinel"]
CMD ["--help"]
