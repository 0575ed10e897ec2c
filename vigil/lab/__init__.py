"""The offline lab: load history, generate telemetry, compare detectors, write the report.

Loaders (:mod:`~vigil.lab.datasets`, :mod:`~vigil.lab.history`), the generator
(:mod:`~vigil.lab.synthetic`), the offline models behind one interface
(:mod:`~vigil.lab.models`, :mod:`~vigil.lab.perceptron`), metrics
(:mod:`~vigil.lab.evaluation`, :mod:`~vigil.lab.nab`), protocols
(:mod:`~vigil.lab.protocol`, :mod:`~vigil.lab.run`), decomposition
(:mod:`~vigil.lab.decompose`) and the report (:mod:`~vigil.lab.report`).
Nothing here runs in the worker.
"""
