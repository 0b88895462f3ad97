# The gateway image: the HTTP API alone, on a slim Python base. No torch, no CUDA, no model code runs
# here (tests/test_packaging.py checks that the gateway imports none of it). Runs as a non-root user and
# writes only to /data (images, the task database) and /tmp, so the root filesystem can be read-only.
# Build from the repository root:  docker build -f deploy/docker/gateway.Dockerfile -t triton-inpaint-gateway .
FROM python:3.11.14-slim-bookworm

ENV VIRTUAL_ENV=/opt/triton-inpaint \
    PATH=/opt/triton-inpaint/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN python -m venv "$VIRTUAL_ENV" \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin inpaint \
    && mkdir -p /data && chown 10001 /data

COPY pyproject.toml README.md /src/
COPY triton_inpaint /src/triton_inpaint
COPY export /src/export
COPY client /src/client
COPY gateway /src/gateway
COPY model_repository /src/model_repository
RUN pip install --no-cache-dir "/src[gateway]" && rm -rf /src

USER 10001
VOLUME ["/data"]
EXPOSE 8080
ENTRYPOINT ["triton-inpaint", "gateway"]
CMD ["--host", "0.0.0.0", "--port", "8080", "--data", "/data"]
