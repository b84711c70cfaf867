// The queue subcommands: etcd's own experimental/recipes Queue and PriorityQueue.
//
//	queue-put   --endpoints E --path P [--n N --value V | --items A,B,...]
//	queue-take  --endpoints E --path P --n N
//	pqueue-put  --endpoints E --path P --priority PR [--n N --value V | --items A,B,...]
//	pqueue-take --endpoints E --path P --n N
//
// A put enqueues --items in order, or N values "V-0".."V-<N-1>" (just V when N is
// 1), printing {"event":"put","value":...} for each, then {"event":"done"}. A take
// dequeues N items, printing {"event":"taken","value":...} for each as soon as it
// has it, then {"event":"done"}; Dequeue blocks while the queue is empty. On SIGTERM,
// SIGINT or EOF on stdin a take prints {"event":"stopped","taken":K} and exits,
// abandoning a Dequeue still waiting (one that removes an item at that very moment
// goes unreported, so tests count on N rather than on stopping).
package main

import (
	"fmt"
	"strings"

	recipe "go.etcd.io/etcd/client/v3/experimental/recipes"
)

// queueValues is what a put subcommand enqueues, in order.
func queueValues(o options) []string {
	if o.items != "" {
		return strings.Split(o.items, ",")
	}
	if o.n == 1 {
		return []string{o.value}
	}
	values := make([]string, o.n)
	for i := range values {
		values[i] = fmt.Sprintf("%s-%d", o.value, i)
	}
	return values
}

func queuePut(o options) {
	client := connect(o)
	defer client.Close()
	enqueueAll(o, recipe.NewQueue(client, o.path).Enqueue, nil)
}

func pqueuePut(o options) {
	if o.priority < 0 || o.priority > 65535 {
		fail(fmt.Errorf("--priority %d is not a uint16", o.priority))
	}
	client := connect(o)
	defer client.Close()
	queue := recipe.NewPriorityQueue(client, o.path)
	enqueue := func(value string) error { return queue.Enqueue(value, uint16(o.priority)) }
	enqueueAll(o, enqueue, map[string]any{"priority": o.priority})
}

// enqueueAll enqueues the put subcommand's values in order, printing put (the value
// and the extra fields) for each, then done.
func enqueueAll(o options, enqueue func(string) error, extra map[string]any) {
	for _, value := range queueValues(o) {
		if err := enqueue(value); err != nil {
			fail(err)
		}
		fields := map[string]any{"value": value}
		for k, v := range extra {
			fields[k] = v
		}
		emit("put", fields)
	}
	emit("done", nil)
}

// takeN runs dequeue N times, printing each value, until done or stopped.
func takeN(o options, dequeue func() (string, error)) {
	stop := stopContext()
	taken := make(chan string)
	failed := make(chan error, 1)
	go func() {
		for i := 0; i < o.n; i++ {
			value, err := dequeue()
			if err != nil {
				failed <- err
				return
			}
			taken <- value
		}
		close(taken)
	}()
	count := 0
	for {
		select {
		case <-stop.Done():
			emit("stopped", map[string]any{"taken": count})
			return
		case err := <-failed:
			fail(err)
		case value, ok := <-taken:
			if !ok {
				emit("done", map[string]any{"taken": count})
				return
			}
			count++
			emit("taken", map[string]any{"value": value})
		}
	}
}

func queueTake(o options) {
	client := connect(o)
	defer client.Close()
	takeN(o, recipe.NewQueue(client, o.path).Dequeue)
}

func pqueueTake(o options) {
	client := connect(o)
	defer client.Close()
	takeN(o, recipe.NewPriorityQueue(client, o.path).Dequeue)
}

func init() {
	commands["queue-put"] = queuePut
	commands["queue-take"] = queueTake
	commands["pqueue-put"] = pqueuePut
	commands["pqueue-take"] = pqueueTake
}
