"""vigil — real-time anomaly detection for IT telemetry."""
__version__ = "0.1.0"
