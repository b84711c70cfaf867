// Command kitexpeer is the Kitex side of geventc's interop tests: it drives the real
// github.com/kitex-contrib/registry-etcd (registry and resolver, at the versions pinned
// in this directory's go.mod/go.sum) against the same etcd as geventc and reports what
// it does as JSON lines on stdout, one object per line, each with an "event" name and a
// "time" (Unix seconds, float).
//
// Subcommands:
//
//	register --endpoints E --service S --addr A [--weight W] [--tags k=v,...]
//	         [--no-tags] [--prefix P] [--ttl N] [--observe-delay D]
//	         [--retry-delay D] [--max-attempts N]
//	    Register one instance as a Kitex server does (registry.Info with a net.Addr,
//	    weight, tags; the TTL through KITEX_ETCD_REGISTRY_LEASE_TTL), print
//	    "registered", then run until SIGTERM, SIGINT or EOF on stdin: Deregister, print
//	    "deregistered" and exit. Kitex's own log lines (klog, e.g. "keep register
//	    service ..." when it re-registers) are printed as "klog" events.
//	resolve --endpoints E --service S [--prefix P] [--default-weight W]
//	    Call the resolver's Resolve once and print "resolved" with the instances (an
//	    empty list and the error's text when Resolve fails, as it does for none).
//
// A failure prints {"event":"error","error":"..."} and exits with status 1.
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
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloudwego/kitex/pkg/klog"
	"github.com/cloudwego/kitex/pkg/registry"
	"github.com/cloudwego/kitex/pkg/utils"
	etcd "github.com/kitex-contrib/registry-etcd"
	"github.com/kitex-contrib/registry-etcd/retry"
)

var outMu sync.Mutex

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

// klogLines turns Kitex's log output into "klog" events, one per line.
type klogLines struct{}

func (klogLines) Write(p []byte) (int, error) {
	for _, text := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if text != "" {
			emit("klog", map[string]any{"text": text})
		}
	}
	return len(p), nil
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

// parseTags reads "k=v,k2=v2" (empty: an empty, non-nil map).
func parseTags(text string) (map[string]string, error) {
	tags := map[string]string{}
	if text == "" {
		return tags, nil
	}
	for _, pair := range strings.Split(text, ",") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return nil, fmt.Errorf("tag %q is not k=v", pair)
		}
		tags[k] = v
	}
	return tags, nil
}

func endpointList(text string) []string {
	if text == "" {
		fail(errors.New("--endpoints is required"))
	}
	return strings.Split(text, ",")
}

func register(args []string) {
	fs := flag.NewFlagSet("register", flag.ExitOnError)
	endpoints := fs.String("endpoints", "", "etcd endpoints, comma-separated")
	service := fs.String("service", "", "service name")
	addr := fs.String("addr", "", "the server's address (host:port)")
	weight := fs.Int("weight", 10, "registry.Info.Weight")
	tagText := fs.String("tags", "", "registry.Info.Tags as k=v,k2=v2")
	noTags := fs.Bool("no-tags", false, "registry.Info.Tags = nil (a server without tags)")
	prefix := fs.String("prefix", "", "WithEtcdServicePrefix (default: Kitex's)")
	ttl := fs.Int("ttl", 0, "KITEX_ETCD_REGISTRY_LEASE_TTL (0: Kitex's default)")
	observe := fs.Duration("observe-delay", 30*time.Second, "retry.WithObserveDelay")
	retryDelay := fs.Duration("retry-delay", 10*time.Second, "retry.WithRetryDelay")
	attempts := fs.Uint("max-attempts", 5, "retry.WithMaxAttemptTimes (0: forever)")
	_ = fs.Parse(args)
	if *ttl > 0 {
		os.Setenv("KITEX_ETCD_REGISTRY_LEASE_TTL", strconv.Itoa(*ttl)) // read by the constructor
	}
	var tags map[string]string
	if !*noTags {
		var err error
		if tags, err = parseTags(*tagText); err != nil {
			fail(err)
		}
	}
	klog.SetOutput(klogLines{})
	klog.SetLevel(klog.LevelInfo)
	config := retry.NewRetryConfig(
		retry.WithObserveDelay(*observe),
		retry.WithRetryDelay(*retryDelay),
		retry.WithMaxAttemptTimes(*attempts),
	)
	var opts []etcd.Option
	if *prefix != "" {
		opts = append(opts, etcd.WithEtcdServicePrefix(*prefix))
	}
	stop := stopContext()
	r, err := etcd.NewEtcdRegistryWithRetry(endpointList(*endpoints), config, opts...)
	if err != nil {
		fail(err)
	}
	info := &registry.Info{
		ServiceName: *service,
		Addr:        utils.NewNetAddr("tcp", *addr),
		Weight:      *weight,
		Tags:        tags,
	}
	if err := r.Register(info); err != nil {
		fail(err)
	}
	emit("registered", map[string]any{"service": *service, "addr": *addr})
	<-stop.Done()
	if err := r.Deregister(info); err != nil {
		fail(err)
	}
	emit("deregistered", nil)
}

func resolve(args []string) {
	fs := flag.NewFlagSet("resolve", flag.ExitOnError)
	endpoints := fs.String("endpoints", "", "etcd endpoints, comma-separated")
	service := fs.String("service", "", "service name")
	prefix := fs.String("prefix", "", "WithEtcdServicePrefix (default: Kitex's)")
	defaultWeight := fs.Int("default-weight", 0, "WithDefaultWeight (0: Kitex's)")
	_ = fs.Parse(args)
	var opts []etcd.Option
	if *prefix != "" {
		opts = append(opts, etcd.WithEtcdServicePrefix(*prefix))
	}
	if *defaultWeight > 0 {
		opts = append(opts, etcd.WithDefaultWeight(*defaultWeight))
	}
	r, err := etcd.NewEtcdResolver(endpointList(*endpoints), opts...)
	if err != nil {
		fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	result, err := r.Resolve(ctx, *service)
	instances := []map[string]any{}
	for _, instance := range result.Instances {
		tags := map[string]string{}
		// discovery.Instance offers Tag(key) only; registry-etcd's instances also
		// implement Tags() (discovery.NewInstance's type).
		if all, ok := instance.(interface{ Tags() map[string]string }); ok {
			tags = all.Tags()
		}
		instances = append(instances, map[string]any{
			"network": instance.Address().Network(),
			"address": instance.Address().String(),
			"weight":  instance.Weight(),
			"tags":    tags,
		})
	}
	sort.Slice(instances, func(i, j int) bool {
		return instances[i]["address"].(string) < instances[j]["address"].(string)
	})
	fields := map[string]any{"instances": instances, "cacheable": result.Cacheable, "cache_key": result.CacheKey}
	if err != nil {
		fields["resolve_error"] = err.Error()
	}
	emit("resolved", fields)
}

func main() {
	commands := map[string]func([]string){"register": register, "resolve": resolve}
	if len(os.Args) < 2 {
		fail(errors.New("usage: kitexpeer register|resolve --flags"))
	}
	run, known := commands[os.Args[1]]
	if !known {
		fail(fmt.Errorf("unknown subcommand %q", os.Args[1]))
	}
	run(os.Args[2:])
}
