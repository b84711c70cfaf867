package main

import (
	"context"

	recipe "go.etcd.io/etcd/client/v3/experimental/recipes"
)

// rwmutex-read / rwmutex-write --endpoints E --path P --ttl N: take the read (or write)
// side of recipe.RWMutex at P, print "locked", hold it until stopped, then "unlocked".
func init() {
	commands["rwmutex-read"] = func(o options) { rwmutex(o, false) }
	commands["rwmutex-write"] = func(o options) { rwmutex(o, true) }
}

func rwmutex(o options, write bool) {
	stop := stopContext()
	client, session := newSession(o)
	defer client.Close()
	defer session.Close()
	rw := recipe.NewRWMutex(session, o.path)
	emit("session", map[string]any{"lease": hexLease(session.Lease())})
	lock, unlock := rw.RLock, rw.RUnlock
	if write {
		lock, unlock = rw.Lock, rw.Unlock
	}
	if stoppedOrFail(stop, untilStopped(stop, lock)) {
		return
	}
	emit("locked", map[string]any{"write": write})
	holdUntilStopped(stop, session, o.path, "unlocked", func(context.Context) error {
		return unlock()
	})
}
