// Command peer is the Go side of geventc's interop tests: it drives etcd's own
// client/v3 and concurrency packages against the same etcd as geventc and reports
// what it sees as JSON lines on stdout, one object per line, each with an "event"
// name and a "time" (Unix seconds, float).
//
// Subcommands:
//
//	campaign             --endpoints E --path P --identity I --ttl N
//	leader               --endpoints E --path P
//	watch-require-leader --endpoints E --key K
//	mutex-key            --endpoints E --path P --ttl N
//	endpoints-add        --endpoints E --path TARGET --key KEY --identity ADDR --weight W
//	endpoints-list       --endpoints E --path TARGET
//
// and those of the other files: observe, campaign-proclaim (observe.go), grpc-serve,
// grpc-dial (grpc.go), the toolkit recipes (barrier.go, queue.go, rwmutex.go, stm.go).
//
// Long-running subcommands exit cleanly (resigning or unlocking, then revoking their
// session's lease) on SIGTERM, SIGINT or EOF on stdin. A failure prints
// {"event":"error","error":"..."} and exits with status 1.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"go.uber.org/zap"
)

var (
	started = time.Now()
	outMu   sync.Mutex
)

// emit prints one JSON line: the event name, the time, then the given fields.
func emit(event string, fields map[string]any) {
	line := map[string]any{"event": event, "time": float64(time.Now().UnixNano()) / 1e9}
	for k, v := range fields {
		line[k] = v
	}
	data, err := json.Marshal(line)
	if err != nil {
		panic(err)
	}
	outMu.Lock()
	defer outMu.Unlock()
	os.Stdout.Write(append(data, '\n'))
}

func fail(err error) {
	emit("error", map[string]any{"error": err.Error()})
	os.Exit(1)
}

// stopContext is cancelled on SIGTERM, SIGINT or EOF on stdin.
func stopContext() context.Context {
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	return ctx
}

// untilStopped runs call (which takes no context, as the recipes' methods) and
// returns its error, or stop's error once stop is done first.
func untilStopped(stop context.Context, call func() error) error {
	done := make(chan error, 1)
	go func() { done <- call() }()
	select {
	case err := <-done:
		return err
	case <-stop.Done():
		return stop.Err()
	}
}

// stoppedOrFail handles the error of a call that waits until stop: nil returns
// false; after the stop signal it prints stopped and returns true (the caller
// returns); any other error fails the peer.
func stoppedOrFail(stop context.Context, err error) bool {
	if err == nil {
		return false
	}
	if stop.Err() != nil {
		emit("stopped", nil)
		return true
	}
	fail(err)
	return true
}

type options struct {
	endpoints string
	path      string
	key       string
	identity  string
	ttl       int
	weight    int
	value     string
	count     int
	priority  int
	n         int
	items     string
	isolation string
	listen    string
}

// commands maps a subcommand to its function; files other than main.go add theirs in
// an init function, so each toolkit recipe's peer lives in a file of its own.
var commands = map[string]func(options){}

func parse(name string, args []string) options {
	var o options
	fs := flag.NewFlagSet(name, flag.ExitOnError)
	fs.StringVar(&o.endpoints, "endpoints", "http://127.0.0.1:2379", "comma-separated client URLs")
	fs.StringVar(&o.path, "path", "", "election or mutex prefix, used as given")
	fs.StringVar(&o.key, "key", "", "key prefix to watch")
	fs.StringVar(&o.identity, "identity", "", "the candidate's value")
	fs.IntVar(&o.ttl, "ttl", 5, "session TTL in seconds")
	fs.IntVar(&o.weight, "weight", 10, "an endpoint's weight (endpoints-add)")
	fs.StringVar(&o.value, "value", "", "a value to write (queues, counters, STM)")
	fs.IntVar(&o.count, "count", 0, "participants (double barrier) or how many items/operations")
	fs.IntVar(&o.priority, "priority", 0, "an item's priority (priority queue)")
	fs.IntVar(&o.n, "n", 1, "how many times to repeat the operation")
	fs.StringVar(&o.items, "items", "", "comma-separated items or keys")
	fs.StringVar(&o.isolation, "isolation", "serializable-snapshot", "STM isolation level")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:0", "address a server listens on (grpc-serve)")
	_ = fs.Parse(args)
	return o
}

func connect(o options) *clientv3.Client {
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(o.endpoints, ","),
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		fail(err)
	}
	return client
}

func hexLease(id clientv3.LeaseID) string { return fmt.Sprintf("%x", int64(id)) }

// waitForKey polls until key exists (or ctx ends); true when it was seen.
func waitForKey(ctx context.Context, client *clientv3.Client, key string) bool {
	for {
		resp, err := client.Get(ctx, key, clientv3.WithKeysOnly())
		if err == nil && len(resp.Kvs) > 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// newSession connects and opens a concurrency session with the options' TTL; the
// caller closes both.
func newSession(o options) (*clientv3.Client, *concurrency.Session) {
	client := connect(o)
	session, err := concurrency.NewSession(client, concurrency.WithTTL(o.ttl))
	if err != nil {
		fail(err)
	}
	return client, session
}

func campaign(o options) {
	stop := stopContext()
	client, session := newSession(o)
	defer client.Close()
	defer session.Close()
	election := concurrency.NewElection(session, o.path)
	// the key Campaign writes, computed as concurrency does: prefix + "/" + hex lease
	key := fmt.Sprintf("%s/%x", o.path, session.Lease())
	emit("session", map[string]any{"lease": hexLease(session.Lease()), "key": key})

	ctx, cancel := context.WithCancel(stop)
	defer cancel()
	led := make(chan error, 1)
	go func() { led <- election.Campaign(ctx, o.identity) }()
	seen := make(chan struct{})
	go func() {
		if waitForKey(ctx, client, key) {
			emit("campaigning", map[string]any{"key": key, "lease": hexLease(session.Lease())})
		}
		close(seen)
	}()

	select {
	case err := <-led:
		<-seen
		if stoppedOrFail(stop, err) {
			return
		}
		emit("leader", map[string]any{
			"key": election.Key(), "rev": election.Rev(), "identity": o.identity,
			"lease": hexLease(session.Lease()),
		})
	case <-session.Done():
		fail(errors.New("session expired while campaigning"))
	}

	holdUntilStopped(stop, session, key, "resigned", election.Resign)
}

// holdUntilStopped waits for the stop signal (then runs release, e.g. Resign or
// Unlock, and reports done) or for the session to expire (reports lost).
func holdUntilStopped(
	stop context.Context, session *concurrency.Session, key, done string,
	release func(context.Context) error,
) {
	select {
	case <-stop.Done():
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := release(ctx); err != nil {
			fail(err)
		}
		emit(done, map[string]any{"key": key})
	case <-session.Done():
		emit("lost", map[string]any{"key": key})
	}
}

func leader(o options) {
	client := connect(o)
	defer client.Close()
	session, err := concurrency.NewSession(client, concurrency.WithTTL(5))
	if err != nil {
		fail(err)
	}
	defer session.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := concurrency.NewElection(session, o.path).Leader(ctx)
	if errors.Is(err, concurrency.ErrElectionNoLeader) {
		emit("no-leader", nil)
		return
	}
	if err != nil {
		fail(err)
	}
	kv := resp.Kvs[0]
	emit("leader", map[string]any{
		"key": string(kv.Key), "value": string(kv.Value), "rev": kv.CreateRevision,
		"lease": hexLease(clientv3.LeaseID(kv.Lease)),
	})
}

func watchRequireLeader(o options) {
	stop := stopContext()
	client := connect(o)
	defer client.Close()
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(stop))
	defer cancel()
	watch := client.Watch(ctx, o.key, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	ended := func(reason string) {
		emit("ended", map[string]any{
			"error": reason, "seconds_since_start": time.Since(started).Seconds(),
		})
	}
	for {
		select {
		case <-stop.Done():
			emit("stopped", nil)
			return
		case resp, ok := <-watch:
			if stop.Err() != nil {
				emit("stopped", nil)
				return
			}
			if !ok {
				ended("watch channel closed")
				return
			}
			if err := resp.Err(); err != nil {
				ended(err.Error())
				return
			}
			if resp.Created {
				emit("created", map[string]any{"revision": resp.Header.Revision})
			}
			for _, ev := range resp.Events {
				emit("change", map[string]any{
					"type": ev.Type.String(), "key": string(ev.Kv.Key),
					"revision": ev.Kv.ModRevision,
				})
			}
		}
	}
}

func mutexKey(o options) {
	stop := stopContext()
	client, session := newSession(o)
	defer client.Close()
	defer session.Close()
	mutex := concurrency.NewMutex(session, o.path)
	emit("session", map[string]any{
		"lease": hexLease(session.Lease()),
		"key":   fmt.Sprintf("%s/%x", o.path, session.Lease()),
	})
	if stoppedOrFail(stop, mutex.Lock(stop)) {
		return
	}
	key := mutex.Key()
	emit("locked", map[string]any{"key": key, "rev": mutex.Header().Revision})
	holdUntilStopped(stop, session, key, "unlocked", mutex.Unlock)
}

// endpointMetadata is the metadata geventc's etcd-endpoints format carries, in its
// field order.
type endpointMetadata struct {
	Network string            `json:"network"`
	Weight  int               `json:"weight"`
	Tags    map[string]string `json:"tags"`
}

// withManager runs use with a naming/endpoints Manager of the target o.path and a
// 10 s context.
func withManager(o options, use func(context.Context, endpoints.Manager)) {
	client := connect(o)
	defer client.Close()
	manager, err := endpoints.NewManager(client, o.path)
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	use(ctx, manager)
}

// endpointsAdd writes one endpoint as Go's naming/endpoints Manager does.
func endpointsAdd(o options) {
	withManager(o, func(ctx context.Context, manager endpoints.Manager) {
		addEndpoint(ctx, manager, o)
	})
}

func addEndpoint(ctx context.Context, manager endpoints.Manager, o options) {
	meta := endpointMetadata{Network: "tcp", Weight: o.weight, Tags: map[string]string{}}
	if err := manager.AddEndpoint(ctx, o.key, endpoints.Endpoint{Addr: o.identity, Metadata: meta}); err != nil {
		fail(err)
	}
	emit("added", map[string]any{"key": o.key})
}

// endpointsList prints every endpoint Go's Manager lists under the target.
func endpointsList(o options) {
	withManager(o, listEndpoints)
}

func listEndpoints(ctx context.Context, manager endpoints.Manager) {
	found, err := manager.List(ctx)
	if err != nil {
		fail(err)
	}
	listed := map[string]any{}
	for key, endpoint := range found {
		listed[key] = map[string]any{"addr": endpoint.Addr, "metadata": endpoint.Metadata}
	}
	emit("endpoints", map[string]any{"endpoints": listed})
}

func init() {
	commands["campaign"] = campaign
	commands["leader"] = leader
	commands["watch-require-leader"] = watchRequireLeader
	commands["mutex-key"] = mutexKey
	commands["endpoints-add"] = endpointsAdd
	commands["endpoints-list"] = endpointsList
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: peer SUBCOMMAND [flags] (see the package comment)")
		os.Exit(2)
	}
	run, known := commands[os.Args[1]]
	if !known {
		fmt.Fprintf(os.Stderr, "peer: unknown subcommand %q\n", os.Args[1])
		os.Exit(2)
	}
	run(parse(os.Args[1], os.Args[2:]))
}
