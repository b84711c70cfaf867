"""``python -m geventc.cli``: the same as ``python -m geventc``."""

import sys

from geventc.cli import main

if __name__ == "__main__":  # pragma: no cover - use python -m geventc
    sys.exit(main())
