// The STM and counter subcommands of the peer: etcd's own concurrency.NewSTM doing
// the same work as geventc's STM and Counter on the same keys.
//
//	stm-transfer  --endpoints E --path P --n N --count ACCOUNTS --isolation LEVEL [--key START]
//	stm-increment --endpoints E --path KEY --n N --isolation LEVEL [--key START]
//	counter-read  --endpoints E --path KEY
//
// stm-transfer makes N random transfers (1 to 20, never overdrawing) between the
// accounts P/0 .. P/ACCOUNTS-1, whose values are decimal text; stm-increment adds 1 to
// KEY N times. Both print "ready" once connected, wait for the key START to exist when
// --key is given (so several peers and geventc start together), run on 4 goroutines
// and print one summary line, "done", with how many times apply ran. counter-read
// prints the value at KEY as strconv.Atoi parses it ("counter", or "missing").
package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// stmWorkers is how many goroutines run a peer's transactions at once.
const stmWorkers = 4

func init() {
	commands["stm-transfer"] = stmTransfer
	commands["stm-increment"] = stmIncrement
	commands["counter-read"] = counterRead
}

func parseIsolation(name string) (concurrency.Isolation, error) {
	switch strings.ReplaceAll(strings.ToLower(name), "_", "-") {
	case "serializable-snapshot":
		return concurrency.SerializableSnapshot, nil
	case "serializable":
		return concurrency.Serializable, nil
	case "repeatable-reads":
		return concurrency.RepeatableReads, nil
	case "read-committed":
		return concurrency.ReadCommitted, nil
	}
	return 0, fmt.Errorf("unknown isolation %q", name)
}

// stmStart connects, reports ready, and waits for the start key when one is given.
func stmStart(o options) (*clientv3.Client, concurrency.Isolation) {
	isolation, err := parseIsolation(o.isolation)
	if err != nil {
		fail(err)
	}
	client := connect(o)
	emit("ready", nil)
	if o.key != "" {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if !waitForKey(ctx, client, o.key) {
			fail(fmt.Errorf("the start key %q did not appear", o.key))
		}
	}
	return client, isolation
}

// parallel runs job(0) .. job(n-1) on stmWorkers goroutines and joins their errors.
func parallel(n int, job func(i int) error) error {
	var wg sync.WaitGroup
	failures := make([]error, stmWorkers)
	for w := 0; w < stmWorkers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += stmWorkers {
				if err := job(i); err != nil {
					failures[w] = err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	return errors.Join(failures...)
}

// atoiOrZero parses a counter or balance: an absent key ("") is 0.
func atoiOrZero(value string) (int, error) {
	if value == "" {
		return 0, nil
	}
	return strconv.Atoi(value)
}

func runSTM(client *clientv3.Client, isolation concurrency.Isolation, apply func(concurrency.STM) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := concurrency.NewSTM(
		client, apply, concurrency.WithIsolation(isolation), concurrency.WithAbortContext(ctx),
	)
	return err
}

func stmTransfer(o options) {
	if o.count < 2 {
		fail(errors.New("stm-transfer needs --count of at least 2 accounts"))
	}
	client, isolation := stmStart(o)
	defer client.Close()
	var runs, made atomic.Int64
	started := time.Now()
	err := parallel(o.n, func(i int) error {
		rng := rand.New(rand.NewSource(int64(i) + 1))
		from := rng.Intn(o.count)
		to := (from + 1 + rng.Intn(o.count-1)) % o.count
		amount := 1 + rng.Intn(20)
		source, target := fmt.Sprintf("%s/%d", o.path, from), fmt.Sprintf("%s/%d", o.path, to)
		moved := false
		err := runSTM(client, isolation, func(s concurrency.STM) error {
			runs.Add(1)
			moved = false
			balance, err := atoiOrZero(s.Get(source))
			if err != nil || balance < amount {
				return err
			}
			other, err := atoiOrZero(s.Get(target))
			if err != nil {
				return err
			}
			s.Put(source, strconv.Itoa(balance-amount))
			s.Put(target, strconv.Itoa(other+amount))
			moved = true
			return nil
		})
		if err == nil && moved {
			made.Add(1)
		}
		return err
	})
	if err != nil {
		fail(err)
	}
	emit("done", map[string]any{
		"transfers": o.n, "made": made.Load(), "runs": runs.Load(),
		"seconds": time.Since(started).Seconds(),
	})
}

func stmIncrement(o options) {
	client, isolation := stmStart(o)
	defer client.Close()
	var runs atomic.Int64
	started := time.Now()
	err := parallel(o.n, func(int) error {
		return runSTM(client, isolation, func(s concurrency.STM) error {
			runs.Add(1)
			value, err := atoiOrZero(s.Get(o.path))
			if err != nil {
				return err
			}
			s.Put(o.path, strconv.Itoa(value+1))
			return nil
		})
	})
	if err != nil {
		fail(err)
	}
	emit("done", map[string]any{
		"increments": o.n, "runs": runs.Load(), "seconds": time.Since(started).Seconds(),
	})
}

func counterRead(o options) {
	client := connect(o)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := client.Get(ctx, o.path)
	if err != nil {
		fail(err)
	}
	if len(resp.Kvs) == 0 {
		emit("missing", nil)
		return
	}
	raw := string(resp.Kvs[0].Value)
	value, err := strconv.Atoi(raw)
	if err != nil {
		fail(err)
	}
	emit("counter", map[string]any{"value": value, "raw": raw})
}
