# syntax=docker/dockerfile:1
# mcp-guard serve as a container: a non-root user, a read-only root filesystem (the only writable
# path is /var/lib/mcp-guard, a volume for the audit log and a SQLite state store), the MCP port
# 8765 and the admin port 9464 (GET /healthz, /readyz, /metrics) for probes and scrapes.
#
#   docker build -t mcp-guard .
#   docker run --read-only -p 8765:8765 -p 9464:9464 \
#     -v "$PWD/guard:/etc/mcp-guard:ro" -v mcp-guard-data:/var/lib/mcp-guard mcp-guard
#
# Upstreams that are Node packages need Node in the image: build FROM this one and add it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE CHANGELOG.md MANIFEST.in ./
COPY mcp_guard ./mcp_guard
RUN pip install --no-cache-dir build==1.3.0 && python -m build --wheel --outdir /dist .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mcp-guard" \
      org.opencontainers.image.description="An MCP gateway that enforces delegated agent authority" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/mcp-guard \
    MCP_GUARD_LOG_FORMAT=json
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl \
    && groupadd --system --gid 10001 mcp-guard \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/mcp-guard --shell /usr/sbin/nologin mcp-guard \
    && mkdir -p /etc/mcp-guard /var/lib/mcp-guard \
    && chown 10001:10001 /var/lib/mcp-guard
VOLUME ["/var/lib/mcp-guard"]
WORKDIR /var/lib/mcp-guard
USER 10001:10001
EXPOSE 8765 9464
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2)"]
ENTRYPOINT ["mcp-guard"]
CMD ["serve", "--config", "/etc/mcp-guard/guard.yaml", "--host", "0.0.0.0", "--port", "8765"]
