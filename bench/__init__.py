"""Benchmarks of vigil: the numpy detector alone and the whole worker end to end.

``vigil bench`` (see :mod:`bench.run`) prints one ``name: value unit`` line per figure:

* :mod:`bench.detector` — the detector's batch path on a bank of series states, no I/O;
* :mod:`bench.pipeline` — points/s and produce-to-anomaly latency through an embedded
  Kafka-protocol broker, one ``vigil worker`` process and Redis.

``bench`` is not installed with vigil (``pip install`` ships the ``vigil`` package only):
``vigil bench`` runs from a source checkout, where it finds this folder next to ``vigil/``
(an editable install) or in the current directory. It needs the demo and lstm extras
(``make setup`` installs them).
"""
