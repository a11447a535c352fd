# One image for every service of the network; compose.yaml picks the console script per service.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ihe ihe
COPY registry registry
COPY repository repository
COPY imaging_source imaging_source
COPY consumer consumer
COPY local_network local_network
COPY schemas schemas
RUN pip install --no-cache-dir . && useradd --system --uid 10001 xds
USER xds
