"""Integrations of geventc with other software.

- :mod:`geventc.contrib.gunicorn`: gunicorn server hooks for ``worker_class = "gevent"``
  (one registration per server, kept by every worker; a connector, resolver and
  configuration per worker) and the helpers request handlers use.
"""
