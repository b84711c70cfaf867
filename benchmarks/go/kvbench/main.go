// Command kvbench is the Go column of geventc's benchmark suite: the key-value
// workloads of benchmarks/kv.py (S1/S2 "kv-seq", S3 "kv-conc"), run against the same
// etcd by etcd's own Go client or by Go's net/http over the JSON gateway.
//
//	kvbench IMPL SCENARIO 'JSON-PARAMS'
//
// IMPL is "go" (go.etcd.io/etcd/client/v3: gRPC, one client shared by every caller,
// as a Go user would) or "go-http" (one net/http.Client posting the JSON bodies the
// Python gateway peers post to /v3/kv/put and /v3/kv/range; its Transport keeps
// MaxIdleConnsPerHost = params "pool" idle connections and, like urllib3's
// non-blocking pool, opens more when more callers need one). SCENARIO is kv-seq or
// kv-conc; PARAMS carries "endpoint", "prefix", "ops" and, for kv-conc, "callers".
//
// Keys, values, warm-up and the order of operations mirror benchmarks/kv.py exactly,
// and the figures have the Python workers' shape: ops_per_s, cpu_us_per_op (this
// process's own user+system CPU from getrusage, every thread, as Python's
// time.process_time), p50_ms, p99_ms, max_ms (percentiles interpolated linearly, as
// benchmarks/common.py's), samples, errors, first_error.
//
// It prints one JSON line, as python -m benchmarks.worker does: {"result": ...,
// "version": ..., "seconds": ...}, or {"error": ...} (exit status 0 either way, so the
// suite files the answer; a usage error exits 2).
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// warmupOps is benchmarks/kv.py's WARMUP_OPS.
const warmupOps = 50

// opTimeout bounds one request (the suite's runner bounds the whole worker too).
const opTimeout = 30 * time.Second

// value is benchmarks/common.py's VALUE: base64 of the bytes 0..191, 256 printable
// bytes, stored as they are (the gateway body base64-encodes them once more).
var value = base64.StdEncoding.EncodeToString(func() []byte {
	raw := make([]byte, 192)
	for i := range raw {
		raw[i] = byte(i)
	}
	return raw
}())

// params are the worker parameters benchmarks/run.py passes.
type params struct {
	Endpoint string `json:"endpoint"`
	Prefix   string `json:"prefix"`
	Ops      int    `json:"ops"`
	Callers  []int  `json:"callers"`
	Pool     int    `json:"pool"`
}

// kv is what the workloads need of an implementation.
type kv interface {
	put(key, value string) error
	// get returns the key's value, found=false when it does not exist.
	get(key string) (value string, found bool, err error)
	close()
}

// --- go: etcd's client/v3 ----------------------------------------------------------

type clientKV struct{ client *clientv3.Client }

func newClientKV(p params) (kv, error) {
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{p.Endpoint},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, err
	}
	return &clientKV{client}, nil
}

func (c *clientKV) put(key, value string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	_, err := c.client.Put(ctx, key, value)
	return err
}

func (c *clientKV) get(key string) (string, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	answer, err := c.client.Get(ctx, key)
	if err != nil || len(answer.Kvs) == 0 {
		return "", false, err
	}
	return string(answer.Kvs[0].Value), true, nil
}

func (c *clientKV) close() { _ = c.client.Close() }

// --- go-http: net/http and encoding/json over the gateway ----------------------------

type httpKV struct {
	client   *http.Client
	endpoint string
}

type putRequest struct {
	Key   []byte `json:"key"` // []byte marshals as base64, as the gateway wants
	Value []byte `json:"value"`
}

type rangeRequest struct {
	Key []byte `json:"key"`
}

type rangeResponse struct {
	Kvs []struct {
		Key   []byte `json:"key"`
		Value []byte `json:"value"`
	} `json:"kvs"`
}

func newHTTPKV(p params) (kv, error) {
	pool := p.Pool
	if pool <= 0 {
		pool = 64
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.Proxy = nil // straight to the gateway, as urllib3's pool goes
	transport.MaxIdleConns = pool
	transport.MaxIdleConnsPerHost = pool
	client := &http.Client{Transport: transport, Timeout: opTimeout}
	return &httpKV{client, strings.TrimRight(p.Endpoint, "/")}, nil
}

// post sends body as JSON and decodes the answer into answer (when not nil).
func (h *httpKV) post(path string, body, answer any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	response, err := h.client.Post(h.endpoint+path, "application/json", bytes.NewReader(data))
	if err != nil {
		return err
	}
	defer response.Body.Close()
	payload, err := io.ReadAll(response.Body)
	if err != nil {
		return err
	}
	if response.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %d %s", path, response.StatusCode, payload)
	}
	if answer == nil {
		var ignored map[string]any // decoded all the same, as the Python peers do
		return json.Unmarshal(payload, &ignored)
	}
	return json.Unmarshal(payload, answer)
}

func (h *httpKV) put(key, value string) error {
	return h.post("/v3/kv/put", putRequest{[]byte(key), []byte(value)}, nil)
}

func (h *httpKV) get(key string) (string, bool, error) {
	var answer rangeResponse
	if err := h.post("/v3/kv/range", rangeRequest{[]byte(key)}, &answer); err != nil {
		return "", false, err
	}
	if len(answer.Kvs) == 0 {
		return "", false, nil
	}
	return string(answer.Kvs[0].Value), true, nil
}

func (h *httpKV) close() { h.client.CloseIdleConnections() }

// --- measuring (benchmarks/common.py and kv.py, in Go) -------------------------------

// cpuSeconds is this process's user+system CPU time so far, every thread included.
func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return math.NaN()
	}
	seconds := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return seconds(usage.Utime) + seconds(usage.Stime)
}

// forEach applies op to every key from callers concurrent callers pulling from one
// shared counter; it returns the wall time, each call's latency and the errors met.
func forEach(keys []string, callers int, op func(string) error) (time.Duration, []float64, []string) {
	latencies := make([]float64, len(keys))
	var errs []string
	var errMu sync.Mutex
	var next atomic.Int64
	callers = max(1, min(callers, len(keys)))
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				index := int(next.Add(1) - 1)
				if index >= len(keys) {
					return
				}
				began := time.Now()
				if err := op(keys[index]); err != nil {
					text := fmt.Sprintf("%T: %v", err, err)
					errMu.Lock()
					errs = append(errs, text[:min(len(text), 200)])
					errMu.Unlock()
				}
				latencies[index] = time.Since(began).Seconds()
			}
		}()
	}
	wg.Wait()
	return time.Since(start), latencies, errs
}

// percentile is the fraction quantile of values, interpolated linearly (NaN if empty).
func percentile(values []float64, fraction float64) float64 {
	ordered := append([]float64(nil), values...)
	sort.Float64s(ordered)
	if len(ordered) == 0 {
		return math.NaN()
	}
	position := fraction * float64(len(ordered)-1)
	low := int(position)
	high := min(low+1, len(ordered)-1)
	return ordered[low] + (ordered[high]-ordered[low])*(position-float64(low))
}

func round(x float64, digits int) float64 {
	scale := math.Pow(10, float64(digits))
	return math.Round(x*scale) / scale
}

// measure runs op on every key from callers callers: throughput, latencies, CPU.
func measure(keys []string, callers int, op func(string) error) map[string]any {
	cpu := cpuSeconds()
	wall, latencies, errs := forEach(keys, callers, op)
	used := cpuSeconds() - cpu
	first := ""
	if len(errs) > 0 {
		first = errs[0]
	}
	maxLatency := 0.0
	for _, l := range latencies {
		maxLatency = max(maxLatency, l)
	}
	return map[string]any{
		"ops_per_s":     round(float64(len(keys))/wall.Seconds(), 1),
		"cpu_us_per_op": round(used*1e6/float64(len(keys)), 1),
		"p50_ms":        round(percentile(latencies, 0.50)*1000, 3),
		"p99_ms":        round(percentile(latencies, 0.99)*1000, 3),
		"max_ms":        round(maxLatency*1000, 3),
		"samples":       len(latencies),
		"errors":        len(errs),
		"first_error":   first,
	}
}

func putter(store kv) func(string) error {
	return func(key string) error { return store.put(key, value) }
}

// reader is a get that fails when the key is missing.
func reader(store kv) func(string) error {
	return func(key string) error {
		_, found, err := store.get(key)
		if err == nil && !found {
			err = fmt.Errorf("%s is missing", key)
		}
		return err
	}
}

// warmUp opens the connections and runs both code paths once.
func warmUp(store kv, prefix string, callers int) {
	keys := make([]string, max(warmupOps, callers))
	for i := range keys {
		keys[i] = fmt.Sprintf("%swarmup/%d", prefix, i)
	}
	forEach(keys, callers, putter(store))
	forEach(keys, callers, func(key string) error { _, _, err := store.get(key); return err })
}

func numbered(prefix string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%07d", prefix, i)
	}
	return keys
}

// kvSeq is S1/S2: sequential puts, then gets of the keys just written.
func kvSeq(store kv, p params) map[string]any {
	warmUp(store, p.Prefix, 1)
	keys := numbered(p.Prefix+"seq/", p.Ops)
	return map[string]any{"put": measure(keys, 1, putter(store)), "get": measure(keys, 1, reader(store))}
}

// kvConc is S3: puts, then gets, from each number of concurrent callers.
func kvConc(store kv, p params) map[string]any {
	most := 1
	for _, c := range p.Callers {
		most = max(most, c)
	}
	warmUp(store, p.Prefix, most)
	results := map[string]any{}
	for _, callers := range p.Callers {
		keys := numbered(fmt.Sprintf("%sc%d/", p.Prefix, callers), p.Ops)
		results[fmt.Sprint(callers)] = map[string]any{
			"put": measure(keys, callers, putter(store)),
			"get": measure(keys, callers, reader(store)),
		}
	}
	return results
}

// version names what was measured: the client module's version, and Go's.
func version(impl string) string {
	if impl == "go-http" {
		return "net/http (" + runtime.Version() + ")"
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "go.etcd.io/etcd/client/v3" {
				return "client/v3 " + dep.Version + " (" + runtime.Version() + ")"
			}
		}
	}
	return "client/v3 ? (" + runtime.Version() + ")"
}

func run(impl, scenario string, p params) (map[string]any, error) {
	makers := map[string]func(params) (kv, error){"go": newClientKV, "go-http": newHTTPKV}
	workloads := map[string]func(kv, params) map[string]any{"kv-seq": kvSeq, "kv-conc": kvConc}
	maker, workload := makers[impl], workloads[scenario]
	if maker == nil || workload == nil {
		return nil, errors.New("unknown implementation or scenario: " + impl + " " + scenario)
	}
	store, err := maker(p)
	if err != nil {
		return nil, err
	}
	defer store.close()
	return workload(store, p), nil
}

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: kvbench go|go-http kv-seq|kv-conc 'JSON-PARAMS'")
		os.Exit(2)
	}
	started := time.Now()
	var p params
	output := map[string]any{}
	if err := json.Unmarshal([]byte(os.Args[3]), &p); err != nil {
		output["error"] = "bad parameters: " + err.Error()
	} else if result, err := run(os.Args[1], os.Args[2], p); err != nil {
		output["error"] = fmt.Sprintf("%T: %v", err, err)
	} else {
		output["result"] = result
		output["version"] = version(os.Args[1])
		output["seconds"] = round(time.Since(started).Seconds(), 2)
	}
	data, err := json.Marshal(output)
	if err != nil {
		data = []byte(`{"error": "cannot encode the answer"}`)
	}
	os.Stdout.Write(append(data, '\n'))
}
