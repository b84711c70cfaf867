"""Participant processes of the chaos harness, run as
``python -m tests.chaos.participants.<name> ...`` from the repository root.

Each prints one JSON object per line on stdout (``ev`` and ``t`` =
``time.monotonic()``) and reads commands, one per line, on stdin. Importing this
package patches the process with gevent first.
"""

from gevent import monkey

monkey.patch_all()
