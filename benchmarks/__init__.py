"""geventc's benchmark suite, as a package: ``python -m benchmarks.run`` (or
``python benchmarks/run.py``) from the repository root; see ``run.py``.

``run`` starts etcd and one ``python -m benchmarks.worker`` process per implementation,
scenario and repetition, and renders the report with ``report``; the scenario modules
(``kv``, ``leases``, ``watchers``, ``recipes``) hold both what a worker runs
(``SCENARIOS``) and their part of the report (``SECTIONS``: tables and targets as data);
``peers`` wraps the implementations, ``common`` and ``environment`` hold shared helpers.
``liveness`` is a separate script (``python -m benchmarks.liveness``).

This module imports nothing: a worker must be able to monkey-patch before anything else.
"""
