"""Registry: service instances registered in etcd, wire-compatible with Kitex.

Each registered instance is an ephemeral key ``{prefix}/{service}/{address}`` on the
connector's shared lease for the registry's TTL (all instances with one TTL cost one
keep-alive request per TTL/3). A lost registration (lease expired or revoked, key
deleted, server restarted, even with an empty data directory) is seen at once by the
watch on the service's keys and re-registered under the :class:`RetryPolicy`; a lease
etcd no longer has is replaced by a new one at once (not a failed attempt), so a
registration whose lease was revoked is back within TTL/3 + one round trip. Giving up
is reported on :meth:`Registry.events` (a fatal :class:`RetriesExhausted`) and in the
log, and is final: the instance's key and its share of the lease are released, it is no
longer listed by :meth:`Registry.instances`, and nothing re-registers it unless it is
registered again. One registry holds any number of instances.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import gevent

from . import validate
from .channel import Channel
from .errors import InvalidArgument, RecipeStateError
from .instances import DEFAULT_PREFIX, Instance, check_format, check_prefix, encode
from .recipes.base import RELEASED, Recipe, RecipeError, Release
from .recipes.ephemeral import EphemeralEvent, EphemeralKey
from .retry import RetryPolicy
from .staleness import Staleness

if TYPE_CHECKING:
    from .host import RecipeHost

log = logging.getLogger("geventc")

DEFAULT_TTL = 60
ENV_TTL = "KITEX_ETCD_REGISTRY_LEASE_TTL"


def _ttl_from_env(ttl: int | None) -> int:
    if ttl is not None:
        return validate.ttl(ttl)
    text = os.environ.get(ENV_TTL)
    if text is None:
        return DEFAULT_TTL
    if not (text.isascii() and text.isdigit() and len(text) <= 10) or int(text) < 1:
        raise InvalidArgument(f"{ENV_TTL}={text!r} must be a positive number of seconds")
    return int(text)


class Registry(Recipe[EphemeralEvent | Staleness]):
    """Registers service instances; see the module docstring.

    ``ttl`` defaults to ``$KITEX_ETCD_REGISTRY_LEASE_TTL`` or 60 s; ``format`` is
    ``kitex`` or ``etcd-endpoints``. A recipe like the others (``conn.registry(...)``):
    its channel (:meth:`events`) reports on every registration; :meth:`register`
    starts it if needed; ``stop()`` (or :meth:`close`) deregisters everything."""

    def __init__(
        self,
        conn: RecipeHost,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: int | None = None,
        retry: RetryPolicy | None = None,
        format: str = "kitex",
    ) -> None:
        super().__init__(conn)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgument("retry must be a geventc.RetryPolicy or None")
        self.prefix = check_prefix(prefix)
        self.ttl = _ttl_from_env(ttl)
        self.retry = retry or RetryPolicy()
        self.format = check_format(format)
        self._keys: dict[str, tuple[Instance, EphemeralKey]] = {}

    def __repr__(self) -> str:
        return f"Registry({self.prefix!r}, instances={len(self._keys)})"

    def _start(self) -> None:
        self._begin()

    def _running_now(self) -> None:
        """Start on first use; a stopped registry registers nothing more."""
        if not self._running:
            if self._stopped:
                raise RecipeStateError(f"{self!r} was closed; make a new one")
            self.start()

    def key_of(self, instance: Instance) -> str:
        """The etcd key of ``instance``."""
        return f"{self.prefix}/{instance.service}/{instance.address}"

    def register(self, instance: Instance) -> Instance:
        """Register ``instance`` (host and port as Kitex resolves them) and keep it
        registered; returns the instance as registered. Registering the same address
        again replaces its value."""
        if not isinstance(instance, Instance):
            raise InvalidArgument("register() takes a geventc.Instance")
        self._running_now()
        registered = instance.for_registration()
        key = self.key_of(registered)
        value = encode(registered, self.format)
        known = self._keys.get(key)
        if known is not None and not known[1].running:  # its retries gave up: anew
            del self._keys[key]
        elif known is not None:  # same address: new value, same key and lease, no gap
            known[1].update(value)
            self._keys[key] = (registered, known[1])
            return registered
        ephemeral = EphemeralKey(self._conn, key, overwrite=True, retry=self.retry)
        ephemeral.create(value, self.ttl, channel=self.channel)
        self._keys[key] = (registered, ephemeral)
        log.info("registered %s at %s", registered.service, registered.address)
        return registered

    def deregister(self, instance: Instance) -> Release:
        """Delete the instance's key and release its share of the lease, within the
        connector's ``stop_timeout``; the :class:`Release` is true only when etcd
        confirmed the deletion (or the instance was not registered here)."""
        if not isinstance(instance, Instance):
            raise InvalidArgument("deregister() takes a geventc.Instance")
        key = self.key_of(instance.for_registration())
        entry = self._keys.pop(key, None)
        if entry is None:
            return RELEASED
        return entry[1].delete()

    def instances(self) -> list[Instance]:
        """The instances this registry keeps registered (not those it gave up on)."""
        self._forget_abandoned()
        return [instance for instance, _ in self._keys.values()]

    def _forget_abandoned(self) -> None:
        """Drop the instances whose retries gave up (their keys stopped)."""
        for key in [k for k, (_, ephemeral) in self._keys.items() if not ephemeral.running]:
            del self._keys[key]

    def events(self) -> Channel[EphemeralEvent | Staleness | RecipeError]:
        """Losses and restorations of registrations, problems (a fatal
        :class:`RecipeError` with :class:`RetriesExhausted` when retries give up), and
        :class:`Staleness` while a registration's watch cannot be confirmed current
        (a deletion of it could go unseen until it is). Starts the registry if needed."""
        if not self._running and not self._stopped:
            self.start()
        return self.channel

    def close(self) -> Release:
        """:meth:`stop`: deregister every instance, all at once, and close the events
        channel; returns within the connector's ``stop_timeout``, true only when etcd
        confirmed every deletion."""
        if not self._running and not self._stopped and not self._keys:
            self.start()  # closing a registry never used still closes its channel
        return self.stop()

    def _release(self) -> Release | None:
        """Deregister every instance at once, each by the registry's own deadline (a
        little before it, so that each outcome is in when it comes)."""
        self._forget_abandoned()
        keys = [ephemeral for _, ephemeral in self._keys.values()]
        self._keys.clear()
        deadline = self._release_deadline - min(0.05, self._remaining() / 10)
        pending = [self._conn.group.spawn(key._shutdown, deadline=deadline) for key in keys]
        gevent.joinall(pending)
        failed = [g.value if isinstance(g.value, Release) else None for g in pending]
        failed = [r for r in failed if r is None or not r.confirmed]
        if not failed:
            return None
        first = next((r for r in failed if r is not None), None)
        return Release(
            False,
            f"{len(failed)} instance(s) not confirmed deregistered"
            + (f"; e.g. {first.detail}" if first else ""),
            _last_to_go(failed),
        )


def _last_to_go(failed: list[Release | None]) -> float | None:
    """About how long the last of the keys ``failed`` to delete stays: None when one of
    them stays until a background retry succeeds (or its outcome is unknown)."""
    expiries = [None if r is None else r.expires_in for r in failed]
    if any(e is None for e in expiries):
        return None
    return max(e for e in expiries if e is not None)
