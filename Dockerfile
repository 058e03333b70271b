FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cdc ./cdc
COPY schemas ./schemas
RUN pip install --no-cache-dir '.[fast]'
ENTRYPOINT ["cdc"]
CMD ["--help"]
