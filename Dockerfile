# The connector as an image: the pgcdc distribution (its command and package are `cdc`), with
# confluent-kafka (librdkafka) as its default producer. Secrets come in as files: --dsn-file and
# --kafka-config-file (Docker or Kubernetes secrets).
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cdc ./cdc
COPY schemas ./schemas
RUN pip install --no-cache-dir .
ENTRYPOINT ["cdc"]
CMD ["--help"]
