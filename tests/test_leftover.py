"""Leftovers against a real etcd: what recipes that stop while etcd does not answer
leave on a lease others still hold is deleted in the background once etcd answers, and
only then is their share of the lease given back (geventc/recipes/leftover.py)."""

from __future__ import annotations

import time

import gevent
import pytest
from helpers.server import paused
from helpers.waiting import wait_until

import geventc
from geventc.errors import RecipeStateError
from geventc.recipes.barrier import DoubleBarrier
from geventc.testing import EtcdServer


def test_keys_on_a_lease_others_hold_are_deleted_once_etcd_answers(
    private_server: EtcdServer,
) -> None:
    with geventc.connect(private_server.endpoints, timeout=0.5, stop_timeout=0.5) as conn:
        kept = conn.ephemeral_key("/keep")
        kept.create("v", ttl=10)  # holds the shared lease alive throughout
        key = conn.ephemeral_key("/eph")
        key.create("v", ttl=10)
        member = conn.group_member("/group", "me", ttl=10)
        member.start()
        queue = conn.queue("/jobs", ttl=10)
        queue.put("job")
        assert queue.claim(timeout=5) is not None
        barrier = DoubleBarrier(conn, "/barrier", 2, ttl=10)
        entering = gevent.spawn(barrier.enter)  # waits for a second participant
        wait_until(lambda: barrier.key is not None, 5, "the waiter key")
        # and its enter() waits for the second participant (not still reading, which a
        # busy machine can make last past the pause below)
        wait_until(lambda: barrier._copy.signal.linkcount() > 0, 5, "the enter to wait")
        (lease,) = conn.lease_keeper.leases()
        assert lease.holders == 5
        with paused(private_server):
            started = time.monotonic()
            releases = [barrier.stop(), key.delete(), member.stop(), queue.stop()]
            assert time.monotonic() - started < 4 * conn.stop_timeout + 1.0
            for release in releases:
                assert not release and "retried in the background" in release.detail
                assert release.expires_in is None  # others keep the lease: no expiry
            assert lease.holders == 5  # the shares are kept while the keys remain
        with pytest.raises(RecipeStateError, match="stopped while it waited"):
            entering.get(timeout=5)
        left = ["/eph", "/group/me"]
        wait_until(lambda: all(conn.get(k) is None for k in left), 10, "the keys to go")
        wait_until(lambda: not conn.get_prefix("/__claims/").kvs, 10, "the claim to go")
        wait_until(lambda: not conn.get_prefix("/barrier/").kvs, 10, "the waiter key to go")
        wait_until(lambda: lease.holders == 1, 5, "the shares to be given back")
        assert conn.get("/keep") is not None and lease.id in conn.leases()
        assert conn.lease_keeper.unrevoked() is None  # nothing was revoked or left
        assert len(conn.get_prefix("/jobs/").kvs) == 1  # the item itself stays queued
        assert kept.delete()
