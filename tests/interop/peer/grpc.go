package main

// A real gRPC service found through etcd: a gRPC server, and a gRPC client that dials
// it by name with go.etcd.io/etcd/client/v3/naming/resolver.
//
//	grpc-serve --listen HOST:PORT (port 0: a free one)
//	grpc-dial  --endpoints E --path TARGET
//	endpoints-hold --endpoints E --path TARGET --key KEY --identity ADDR --weight W --ttl N

import (
	"context"
	"net"
	"sort"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/naming/endpoints"
	"go.etcd.io/etcd/client/v3/naming/resolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	gresolver "google.golang.org/grpc/resolver"
)

// grpcServe serves grpc.health.v1.Health (status SERVING) and prints "serving" with
// the address it listens on, until stopped ("stopped").
func grpcServe(o options) {
	stop := stopContext()
	listener, err := net.Listen("tcp", o.listen)
	if err != nil {
		fail(err)
	}
	server := grpc.NewServer()
	healthpb.RegisterHealthServer(server, health.NewServer()) // "" is SERVING
	go func() { _ = server.Serve(listener) }()
	emit("serving", map[string]any{"addr": listener.Addr().String()})
	<-stop.Done()
	server.Stop()
	emit("stopped", nil)
}

// spyConn is the resolver's view of the ClientConn: it reports each state the etcd
// resolver hands gRPC ("resolved" with the sorted addresses) before passing it on.
type spyConn struct {
	gresolver.ClientConn
}

func (c spyConn) UpdateState(state gresolver.State) error {
	addrs := []string{}
	for _, endpoint := range state.Endpoints {
		for _, address := range endpoint.Addresses {
			addrs = append(addrs, address.Addr)
		}
	}
	for _, address := range state.Addresses {
		addrs = append(addrs, address.Addr)
	}
	sort.Strings(addrs)
	emit("resolved", map[string]any{"addresses": addrs})
	return c.ClientConn.UpdateState(state)
}

// spyBuilder is the etcd resolver builder, building resolvers that report to a spyConn.
type spyBuilder struct {
	gresolver.Builder
}

func (b spyBuilder) Build(
	target gresolver.Target, cc gresolver.ClientConn, opts gresolver.BuildOptions,
) (gresolver.Resolver, error) {
	return b.Builder.Build(target, spyConn{cc}, opts)
}

// grpcDial dials etcd:///TARGET with etcd's naming resolver and calls Health.Check
// every 50 ms. It prints "resolved" for every resolver update, and on every change of
// outcome "answered" (with the server address the call reached) or "failed" (with the
// gRPC status), until stopped ("stopped").
func grpcDial(o options) {
	stop := stopContext()
	client := connect(o)
	defer client.Close()
	builder, err := resolver.NewBuilder(client)
	if err != nil {
		fail(err)
	}
	conn, err := grpc.NewClient(
		"etcd:///"+o.path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithResolvers(spyBuilder{builder}),
	)
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	var last string
	var mu sync.Mutex
	check := func() {
		ctx, cancel := context.WithTimeout(stop, 500*time.Millisecond)
		defer cancel()
		var reached peer.Peer
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&reached))
		mu.Lock()
		defer mu.Unlock()
		if stop.Err() != nil {
			return
		}
		if err != nil {
			if last != "failed" {
				last = "failed"
				emit("failed", map[string]any{"error": err.Error()})
			}
			return
		}
		outcome := "answered " + reached.Addr.String()
		if outcome != last {
			last = outcome
			emit("answered", map[string]any{
				"addr": reached.Addr.String(), "status": resp.GetStatus().String(),
			})
		}
	}
	conn.Connect()
	for {
		check()
		select {
		case <-stop.Done():
			emit("stopped", nil)
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// endpointsHold registers one endpoint as a Go gRPC server does with
// endpoints.Manager.AddEndpoint on its session's lease ("added" with the key and the
// lease in hex), and on SIGTERM deletes it with DeleteEndpoint ("deleted"); "lost" if
// the session ends first (its lease was revoked or expired).
func endpointsHold(o options) {
	stop := stopContext()
	client, session := newSession(o)
	defer client.Close()
	defer session.Close()
	manager, err := endpoints.NewManager(client, o.path)
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	meta := endpointMetadata{Network: "tcp", Weight: o.weight, Tags: map[string]string{}}
	endpoint := endpoints.Endpoint{Addr: o.identity, Metadata: meta}
	if err := manager.AddEndpoint(ctx, o.key, endpoint, clientv3.WithLease(session.Lease())); err != nil {
		fail(err)
	}
	emit("added", map[string]any{"key": o.key, "lease": hexLease(session.Lease())})
	select {
	case <-stop.Done():
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		if err := manager.DeleteEndpoint(dctx, o.key); err != nil {
			fail(err)
		}
		emit("deleted", map[string]any{"key": o.key})
	case <-session.Done():
		emit("lost", map[string]any{"key": o.key})
	}
}

func init() {
	commands["endpoints-hold"] = endpointsHold
	commands["grpc-serve"] = grpcServe
	commands["grpc-dial"] = grpcDial
}
