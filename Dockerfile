# One image for every Ferry service; docker-compose.yml and the Helm chart pick the module to run.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall torch.
COPY pyproject.toml README.md ./
COPY gen ./gen
COPY services ./services
COPY devstack ./devstack
COPY tools ./tools
COPY clients ./clients
RUN pip install --no-cache-dir . \
    && useradd --uid 10001 --no-create-home ferry
USER 10001

# Overridden per service: python -m services.<gateway|inference|jobs|store>
CMD ["python", "-m", "services.gateway"]
