"""The maths of vigil: resampling, seasonal baseline and trend, scoring, incidents.

Pure functions and small classes over numpy arrays — no Kafka, no Redis, no asyncio.
"""
