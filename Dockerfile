# CPU image: the service and its default models, no torch in the final stage.
#   docker build -t image-inference-service .
#   docker run --rm -p 8000:8000 image-inference-service
# (A CUDA variant belongs to the deployment work; see the README.)

# ---- stage 1: build the default models (needs torch; thrown away afterwards) ----
FROM python:3.11-slim AS models
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
COPY scripts ./scripts
# The CPU build of torch keeps this stage at ~1 GB instead of ~6 GB.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision \
 && pip install ./client ".[export]"
RUN IIS_CACHE_DIR=/tmp/cache python -m scripts build-models --no-test-data --out /models

# ---- stage 2: the service ----
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    IIS_HOST=0.0.0.0 IIS_PORT=8000 IIS_MODELS_DIR=/app/models IIS_DATA_DIR=/var/lib/iis
WORKDIR /app
# The service and the client distribution's models (client/; not its command's extra).
COPY pyproject.toml README.md ./
COPY client ./client
COPY service ./service
RUN pip install ./client . && useradd --create-home --uid 10001 app \
 && mkdir -p /var/lib/iis && chown app /var/lib/iis
COPY --from=models --chown=root:root /models /app/models
# Runs as non-root. Only /tmp (uploads over 1 MB are spooled there) and the face-gallery
# database in /var/lib/iis (SQLite, unless IIS_DATABASE_URL) are written, so
# `docker run --read-only --tmpfs /tmp -v iis-data:/var/lib/iis ...` works.
VOLUME /var/lib/iis
USER app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "service"]
