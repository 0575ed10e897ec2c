"""Wiring and I/O: the Faust app, topics, records, parsers, the Redis state store, the CLI."""
