# The vigil worker image (used by docker-compose.yml): `pip install .` only, the worker and
# the notifier, no extras (no torch, no lab). A worker that loads an LSTM model
# (VIGIL_LSTM_MODEL) needs torch: build FROM this image and
#   RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY vigil ./vigil
RUN pip install .

RUN useradd --create-home vigil
USER vigil
EXPOSE 6066
ENTRYPOINT ["vigil"]
CMD ["worker"]
