"""The worker's online maths: resampling, the per-series detector and its state record,
the LSTM model.

Pure functions and small classes over numpy arrays — no Kafka, no Redis, no asyncio, no
files. The offline lab is :mod:`vigil.lab`.
"""
