// Barrier and DoubleBarrier peers: etcd's own experimental/recipes barriers, for the
// interop tests of geventc's Barrier and DoubleBarrier.
//
//	barrier-hold         --endpoints E --path P   Hold; prints held (or exists), exits
//	barrier-release      --endpoints E --path P   Release; prints released, exits
//	barrier-wait         --endpoints E --path P   prints waiting, Wait, prints passed
//	double-barrier       --endpoints E --path P --count N --ttl T
//	                     Enter (prints entered, or too-many), Leave, prints left
//	double-barrier-enter --endpoints E --path P --count N --ttl T
//	                     Enter (prints entered, or too-many), then waits for a line on
//	                     stdin before it leaves (prints left); SIGTERM or EOF ends it
//	                     without leaving (its session lease is revoked), SIGKILL lets
//	                     the lease expire
package main

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"

	recipe "go.etcd.io/etcd/client/v3/experimental/recipes"
)

func barrierHold(o options) {
	client := connect(o)
	defer client.Close()
	err := recipe.NewBarrier(client, o.path).Hold()
	if errors.Is(err, recipe.ErrKeyExists) {
		emit("exists", map[string]any{"key": o.path})
		return
	}
	if err != nil {
		fail(err)
	}
	emit("held", map[string]any{"key": o.path})
}

func barrierRelease(o options) {
	client := connect(o)
	defer client.Close()
	if err := recipe.NewBarrier(client, o.path).Release(); err != nil {
		fail(err)
	}
	emit("released", map[string]any{"key": o.path})
}

func barrierWait(o options) {
	stop := stopContext()
	client := connect(o)
	defer client.Close()
	emit("waiting", map[string]any{"key": o.path})
	if stoppedOrFail(stop, untilStopped(stop, recipe.NewBarrier(client, o.path).Wait)) {
		return
	}
	emit("passed", map[string]any{"key": o.path})
}

func doubleBarrier(o options) { runDoubleBarrier(o, nil, stopContext()) }

// doubleBarrierEnter is doubleBarrier with a pause between Enter and Leave: it leaves
// once a line arrives on stdin; EOF, SIGTERM or SIGINT end it without leaving.
func doubleBarrierEnter(o options) {
	stop, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	leave := make(chan struct{}, 1)
	go func() {
		lines := bufio.NewScanner(os.Stdin)
		for lines.Scan() {
			leave <- struct{}{}
		}
		cancel()
	}()
	runDoubleBarrier(o, leave, stop)
}

func runDoubleBarrier(o options, leave <-chan struct{}, stop context.Context) {
	client, session := newSession(o)
	defer client.Close()
	defer session.Close()
	barrier := recipe.NewDoubleBarrier(session, o.path, o.count)
	emit("session", map[string]any{"lease": hexLease(session.Lease())})
	err := untilStopped(stop, barrier.Enter)
	if errors.Is(err, recipe.ErrTooManyClients) {
		emit("too-many", nil)
		return
	}
	if stoppedOrFail(stop, err) {
		return
	}
	emit("entered", nil)
	if leave != nil {
		select {
		case <-leave:
		case <-stop.Done():
			emit("stopped", nil)
			return
		case <-session.Done():
			emit("lost", nil)
			return
		}
	}
	if stoppedOrFail(stop, untilStopped(stop, barrier.Leave)) {
		return
	}
	emit("left", nil)
}

func init() {
	commands["barrier-hold"] = barrierHold
	commands["barrier-release"] = barrierRelease
	commands["barrier-wait"] = barrierWait
	commands["double-barrier"] = doubleBarrier
	commands["double-barrier-enter"] = doubleBarrierEnter
}
