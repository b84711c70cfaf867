"""``python -m geventc``: the geventc command (see :mod:`geventc.cli`).

:func:`geventc.cli.main` patches gevent first thing; importing the ``geventc`` package
before it loads no network module.
"""

import sys

from geventc.cli import main

if __name__ == "__main__":
    sys.exit(main())
