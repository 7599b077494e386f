# One image for the central services (ingest, control, api) and for the edge agent on a Pi (arm64 builds too).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src src
COPY examples examples
RUN pip install --no-cache-dir . && useradd --system --home /var/lib/energyhub energyhub
ENTRYPOINT ["energyhub"]
CMD ["--help"]
