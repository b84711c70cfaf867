"""Queue participant: puts items into one Queue until told to stop.

Item n of process ``slot.gen`` has the value ``slot.gen-n``: each put is a new value,
so every item in etcd names the one put that made it. Records ``put`` (value) before
each put, then ``put-ok`` (value, key, revision), ``put-unknown`` (IndeterminateWrite:
it may or may not be in the queue) or ``put-error`` (not stored). Commands: ``stop``
stops putting and records ``done``.
"""

from __future__ import annotations

from geventc.errors import EtcdError, IndeterminateWrite

from . import common


def main() -> None:
    parser = common.options(__doc__ or "")
    parser.add_argument("--path", required=True, help="the queue")
    parser.add_argument("--identity", required=True)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between puts")
    args = parser.parse_args()
    conn = common.connect(args)
    queue = conn.queue(args.path)

    def put(n: int) -> None:
        value = f"{args.identity}-{n}"
        common.emit("put", value=value)
        try:
            item = queue.put(value)
        except IndeterminateWrite as exc:
            common.emit("put-unknown", value=value, error=repr(exc))
        except EtcdError as exc:
            common.emit("put-error", value=value, error=repr(exc))
        else:
            common.emit("put-ok", value=value, key=item.key_str, revision=item.revision)

    common.repeat_until_stopped(put, args.interval)


if __name__ == "__main__":
    common.run(main)
