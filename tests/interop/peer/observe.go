package main

// Election Observe and Proclaim: a Go observer of an election, and a campaigning Go
// candidate that proclaims the values it is told on stdin.
//
//	observe           --endpoints E --path P
//	campaign-proclaim --endpoints E --path P --identity I --ttl N
//	                  (stdin lines "proclaim VALUE")

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// stopWithCommands is stopContext for a peer that also takes commands: each stdin
// line is sent on the channel, and EOF on stdin (or SIGTERM, SIGINT) cancels.
func stopWithCommands() (context.Context, <-chan string) {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	lines := make(chan string, 16)
	go func() {
		scanner := bufio.NewScanner(os.Stdin)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
		cancel()
	}()
	return ctx, lines
}

// observe prints every response of concurrency.Election.Observe: "observed" with the
// leader's key, value, create revision and the key's mod revision, in order, until
// stopped ("stopped") or the channel closes ("closed").
func observe(o options) {
	stop := stopContext()
	client, session := newSession(o)
	defer client.Close()
	defer session.Close()
	observed := concurrency.NewElection(session, o.path).Observe(stop)
	emit("observing", nil)
	for resp := range observed {
		kv := resp.Kvs[0]
		emit("observed", map[string]any{
			"key": string(kv.Key), "value": string(kv.Value),
			"rev": kv.CreateRevision, "mod_rev": kv.ModRevision,
		})
	}
	if stop.Err() != nil {
		emit("stopped", nil)
		return
	}
	emit("closed", nil)
}

// campaignProclaim campaigns as "campaign" does (session, campaigning, leader), then
// runs election.Proclaim for each stdin line "proclaim VALUE" ("proclaimed" with the
// value, or "proclaim-failed" with the error; ErrElectionNotLeader is "not-leader").
// Lines that come before it leads are proclaimed while it waits, as Go allows once
// Campaign has written the key. SIGTERM resigns ("resigned").
func campaignProclaim(o options) {
	stop, commands := stopWithCommands()
	client, session := newSession(o)
	defer client.Close()
	defer session.Close()
	election := concurrency.NewElection(session, o.path)
	key := fmt.Sprintf("%s/%x", o.path, session.Lease())
	emit("session", map[string]any{"lease": hexLease(session.Lease()), "key": key})

	ctx, cancel := context.WithCancel(stop)
	defer cancel()
	led := make(chan error, 1)
	go func() { led <- election.Campaign(ctx, o.identity) }()
	if waitForKey(ctx, client, key) {
		emit("campaigning", map[string]any{"key": key, "lease": hexLease(session.Lease())})
	}
	proclaim := func(line string) {
		value, ok := strings.CutPrefix(line, "proclaim ")
		if !ok {
			fail(fmt.Errorf("unknown command %q", line))
		}
		pctx, pcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer pcancel()
		err := election.Proclaim(pctx, value)
		switch {
		case err == nil:
			emit("proclaimed", map[string]any{"value": value, "rev": election.Header().Revision})
		case errors.Is(err, concurrency.ErrElectionNotLeader):
			emit("not-leader", map[string]any{"value": value})
		default:
			emit("proclaim-failed", map[string]any{"value": value, "error": err.Error()})
		}
	}
	for {
		select {
		case err := <-led:
			if stoppedOrFail(stop, err) {
				return
			}
			led = nil
			emit("leader", map[string]any{
				"key": election.Key(), "rev": election.Rev(), "identity": o.identity,
				"lease": hexLease(session.Lease()),
			})
		case line := <-commands:
			proclaim(line)
		case <-stop.Done():
			if led != nil { // still waiting: Campaign's context cancel resigns
				<-led
				emit("stopped", nil)
				return
			}
			rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer rcancel()
			if err := election.Resign(rctx); err != nil {
				fail(err)
			}
			emit("resigned", map[string]any{"key": key})
			return
		case <-session.Done():
			emit("lost", map[string]any{"key": key})
			return
		}
	}
}

func init() {
	commands["observe"] = observe
	commands["campaign-proclaim"] = campaignProclaim
}
