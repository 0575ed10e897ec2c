"""Faust wiring: the worker and notifier apps, topics, records, input parsers, the Redis
state store and the settings. Maths is in :mod:`vigil.detectors`, output in :mod:`vigil.sinks`."""
