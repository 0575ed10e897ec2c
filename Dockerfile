# The vigil worker image (used by docker-compose.yml).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app

# CPU build of torch first, so the dependency resolver does not fetch a CUDA build.
RUN pip install torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY vigil ./vigil
COPY bench ./bench
RUN pip install .

RUN useradd --create-home vigil
USER vigil
EXPOSE 6066
ENTRYPOINT ["vigil"]
CMD ["worker"]
