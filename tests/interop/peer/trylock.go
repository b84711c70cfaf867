package main

// concurrency.Mutex.TryLock:
//
//	mutex-trylock --endpoints E --path P --ttl N

import (
	"errors"
	"fmt"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// mutexTryLock runs concurrency.Mutex.TryLock once: "busy" (with the key it tried) on
// ErrLocked, then exits (TryLock deleted that key); or "locked" (key, rev), held until
// SIGTERM ("unlocked").
func mutexTryLock(o options) {
	stop := stopContext()
	client, session := newSession(o)
	defer client.Close()
	defer session.Close()
	mutex := concurrency.NewMutex(session, o.path)
	tried := fmt.Sprintf("%s/%x", o.path, session.Lease())
	err := mutex.TryLock(stop)
	if errors.Is(err, concurrency.ErrLocked) {
		emit("busy", map[string]any{"key": tried})
		return
	}
	if stoppedOrFail(stop, err) {
		return
	}
	emit("locked", map[string]any{"key": mutex.Key(), "rev": mutex.Header().Revision})
	holdUntilStopped(stop, session, mutex.Key(), "unlocked", mutex.Unlock)
}

func init() {
	commands["mutex-trylock"] = mutexTryLock
}
