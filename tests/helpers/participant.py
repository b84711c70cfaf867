"""A leader-election participant in its own process, for fault tests.

Usage: python -m tests.helpers.participant ENDPOINTS PATH IDENTITY TTL
Prints one JSON line per election event: {"status", "leader", "token", "t"}.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import geventc  # noqa: E402


def main() -> None:
    endpoints, path, identity, ttl = sys.argv[1:5]
    with geventc.connect(endpoints.split(",")) as conn:
        elector = conn.leader_elector(path, identity, ttl=int(ttl))
        for event in elector.start():
            if isinstance(event, geventc.ElectionEvent):
                line = {
                    "status": event.status.value,
                    "leader": event.leader,
                    "token": event.fencing_token,
                    "t": time.monotonic(),
                }
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
