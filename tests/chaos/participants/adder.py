"""Counter participant: adds 1 to one Counter, over and over, until told to stop.

Per add it records ``add`` (n: its number in this process) before the call, then its
outcome: ``added`` (n, value: the counter's value after it, as ``add`` returned it),
``indeterminate`` (IndeterminateWrite: it may or may not have been applied) or
``add-error`` (any other error: not applied). Commands: ``stop`` stops adding and
records ``done`` (the process then waits to be killed).
"""

from __future__ import annotations

from geventc.errors import EtcdError, IndeterminateWrite

from . import common


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--path", required=True, help="the counter's key")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between adds")
    args = parser.parse_args()
    conn = common.connect(args)
    counter = conn.counter(args.path)

    def add(n: int) -> None:
        common.emit("add", n=n)
        try:
            value = counter.add(1)
        except IndeterminateWrite as exc:
            common.emit("indeterminate", n=n, error=repr(exc))
        except EtcdError as exc:
            common.emit("add-error", n=n, error=repr(exc))
        else:
            common.emit("added", n=n, value=value)

    common.repeat_until_stopped(add, args.interval)


if __name__ == "__main__":
    common.run(main)
