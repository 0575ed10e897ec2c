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
# Compile the detector's step kernel into numba's cache now: the worker then loads it at
# start (about a second) instead of compiling it (if the host's CPU differs from the
# builder's, numba compiles once more, at the worker's start).
ENV NUMBA_CACHE_DIR=/app/numba-cache
RUN python -c "from vigil.detectors.online import warm_up; warm_up()"

RUN useradd --create-home vigil && chown -R vigil /app/numba-cache
USER vigil
EXPOSE 6066
ENTRYPOINT ["vigil"]
CMD ["worker"]
