// Command porcupine-check checks a KV history of geventc's chaos runs for
// linearizability with porcupine (github.com/anishathalye/porcupine, pinned in go.mod).
//
// The history is the file tests/chaos/linearizability.py writes (JSON lines): a header
// {"model": "single"|"multi", "keys": [...]}, then one operation per line:
//
//	{"id": n, "client": c, "call": ns, "return": ns or null, "key": "k",
//	 "in": {...}, "out": {...}}
//
// "return": null is an operation whose outcome is unknown (an IndeterminateWrite, a
// timeout, a caller interrupted): it returns at infinity and any output is allowed, so
// it may take effect at any moment after its call, or never.
//
// Models: "single" checks each key on its own (porcupine's P-compositionality; the
// state is the key's value or absent), with operations get, put, delete and cas
// (a txn comparing the key's value, or its absence, putting a new value on success and
// reading the key on failure). "multi" checks one model over all keys (the state is a
// map key -> value, at most 16 keys), with txn (compares over several keys' values or
// absence, puts/deletes on success, reads of the compared keys on failure) and range
// (every key and value, as get_prefix returns them) besides the single-key operations.
//
// Exit status: 0 when the history is linearizable, 1 when it is not or when the check
// did not finish within -timeout (porcupine's Unknown: not a pass), 2 on a bad input.
// On failure (or with -visualize) porcupine's HTML visualisation of the failing keys
// (every key with -visualize) is written to -html (default: the history's path with
// .html).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

const maxKeys = 16

// compare is one txn comparison: the key's value equals Value, or (Value nil) the key
// is absent.
type compare struct {
	Key   int     `json:"key"`
	Value *string `json:"value"`
}

// write is one operation of a txn's success branch.
type write struct {
	Op    string `json:"op"` // put or delete
	Key   int    `json:"key"`
	Value string `json:"value"`
}

// input is what an operation asked for. Single-key operations name Key (and its index
// KeyIdx); txn comparisons and writes use key indices into the header's keys.
type input struct {
	Op      string    `json:"op"` // get, put, delete, cas, txn, range
	Key     string    `json:"key"`
	KeyIdx  int       `json:"idx"`
	Value   string    `json:"value"`
	Expect  *string   `json:"expect"`
	Compare []compare `json:"compare"`
	Success []write   `json:"success"`
}

// read is one key's value as an answer showed it, with its mod_revision (0: not told).
type read struct {
	Found bool   `json:"found"`
	Value string `json:"value"`
	Mod   int64  `json:"mod"`
}

// output is what an operation answered. Rev is the answer's header revision (0: not
// told); for an Unknown write it is the revision reads showed its value at (0: none).
type output struct {
	Unknown   bool            `json:"unknown"`
	Rev       int64           `json:"rev"`
	Found     bool            `json:"found"`
	Value     string          `json:"value"`
	Mod       int64           `json:"mod"`
	Deleted   int             `json:"deleted"`
	Succeeded bool            `json:"succeeded"`
	Reads     []read          `json:"reads"`
	KVs       map[string]read `json:"kvs"`
}

type record struct {
	ID     int    `json:"id"`
	Client int    `json:"client"`
	Call   int64  `json:"call"`
	Return *int64 `json:"return"`
	Key    string `json:"key"`
	In     input  `json:"in"`
	Out    output `json:"out"`
}

type header struct {
	Model string   `json:"model"`
	Keys  []string `json:"keys"`
}

// --- the single-key model ----------------------------------------------------------
//
// The state is the key's value (or absent) and the revision of its last change (a
// lower bound of it when that change's revision is unknown). etcd's revisions are the
// order it applied writes in, so the model also requires a write of the key to take a
// revision above the key's last change, a read to show the value *and* mod_revision of
// the state, and every header revision to be at least the key's last change: writes of
// a key linearize in revision order, which keeps porcupine's search nearly linear even
// with dozens of concurrent readers.

type register struct {
	present bool
	value   string
	mod     int64
}

func (r register) String() string {
	if !r.present {
		return fmt.Sprintf("absent (since %d)", r.mod)
	}
	return fmt.Sprintf("%q@%d", r.value, r.mod)
}

func matches(present bool, value string, expect *string) bool {
	if expect == nil {
		return !present
	}
	return present && value == *expect
}

// sees reports whether a read showing (found, value, mod) at header revision rev is one
// of the state (present, value, its mod).
func sees(present bool, value string, mod int64, r read, rev int64) bool {
	if rev != 0 && rev < mod {
		return false
	}
	if r.Found != present {
		return false
	}
	return !present || (r.Value == value && (r.Mod == 0 || r.Mod == mod))
}

// changed is the revision of a write that took effect after a change at mod: ok when
// unknown (0: the old one stays as a lower bound) or above mod.
func changed(rev, mod int64) (bool, int64) {
	if rev == 0 {
		return true, mod
	}
	return rev > mod, rev
}

func stepRegister(state, in, out interface{}) (bool, interface{}) {
	s := state.(register)
	i := in.(input)
	o := out.(output)
	switch i.Op {
	case "get":
		return o.Unknown || sees(s.present, s.value, s.mod, read{o.Found, o.Value, o.Mod}, o.Rev), s
	case "put":
		ok, rev := changed(o.Rev, s.mod)
		return ok, register{true, i.Value, rev}
	case "delete":
		if !s.present {
			return o.Unknown || (o.Deleted == 0 && (o.Rev == 0 || o.Rev >= s.mod)), s
		}
		if !o.Unknown && o.Deleted != 1 {
			return false, s
		}
		if o.Unknown {
			return true, register{false, "", s.mod}
		}
		ok, rev := changed(o.Rev, s.mod)
		return ok, register{false, "", rev}
	case "cas":
		holds := matches(s.present, s.value, i.Expect)
		if !o.Unknown && o.Succeeded != holds {
			return false, s
		}
		if holds {
			ok, rev := changed(o.Rev, s.mod)
			return ok, register{true, i.Value, rev}
		}
		return o.Unknown || sees(s.present, s.value, s.mod, read{o.Found, o.Value, o.Mod}, o.Rev), s
	}
	panic("unknown single-key operation " + i.Op)
}

func describeSingle(in, out interface{}) string {
	i := in.(input)
	o := out.(output)
	var call string
	switch i.Op {
	case "get", "delete":
		call = fmt.Sprintf("%s(%s)", i.Op, i.Key)
	case "put":
		call = fmt.Sprintf("put(%s, %q)", i.Key, i.Value)
	case "cas":
		expect := "absent"
		if i.Expect != nil {
			expect = fmt.Sprintf("%q", *i.Expect)
		}
		call = fmt.Sprintf("cas(%s, %s -> %q)", i.Key, expect, i.Value)
	}
	return call + " -> " + describeOutput(i, o)
}

func shown(r read) string {
	if !r.Found {
		return "absent"
	}
	return fmt.Sprintf("%q@%d", r.Value, r.Mod)
}

func describeOutput(i input, o output) string {
	at := fmt.Sprintf(" (rev %d)", o.Rev)
	if o.Unknown {
		return "unknown" + at
	}
	switch i.Op {
	case "get":
		return shown(read{o.Found, o.Value, o.Mod}) + at
	case "put":
		return "ok" + at
	case "delete":
		return fmt.Sprintf("deleted %d", o.Deleted) + at
	case "cas":
		if o.Succeeded {
			return "ok" + at
		}
		return "failed, " + shown(read{o.Found, o.Value, o.Mod}) + at
	case "txn":
		if o.Succeeded {
			return "ok" + at
		}
		parts := make([]string, len(o.Reads))
		for n, r := range o.Reads {
			parts[n] = shown(r)
		}
		return "failed, [" + strings.Join(parts, ", ") + "]" + at
	case "range":
		return describeKVs(o.KVs) + at
	}
	return "?"
}

func describeKVs(kvs map[string]read) string {
	keys := make([]string, 0, len(kvs))
	for k := range kvs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for n, k := range keys {
		parts[n] = fmt.Sprintf("%s=%q@%d", k, kvs[k].Value, kvs[k].Mod)
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

func singleModel() porcupine.Model {
	return porcupine.Model{
		Init:              func() interface{} { return register{} },
		Step:              stepRegister,
		Equal:             func(a, b interface{}) bool { return a.(register) == b.(register) },
		DescribeOperation: describeSingle,
		DescribeState:     func(s interface{}) string { return s.(register).String() },
	}
}

// --- the multi-key model -----------------------------------------------------------
//
// The state is every key's value (or absent) and last change, as in the single-key
// model, and rev: the highest revision of the writes linearized so far. A write takes a
// revision above each changed key's last change and at least rev (one coalesced txn
// gives several callers' writes one revision), and every header revision is at least
// rev.

// store is comparable with ==.
type store struct {
	present uint16
	values  [maxKeys]string
	mods    [maxKeys]int64
	rev     int64
}

func (s store) has(k int) bool { return s.present&(1<<k) != 0 }

func (s store) read(k int) read { return read{s.has(k), s.values[k], s.mods[k]} }

func (s store) sees(k int, r read, rev int64) bool {
	if rev != 0 && rev < s.rev {
		return false
	}
	return sees(s.has(k), s.values[k], s.mods[k], r, 0)
}

// apply applies writes at revision rev (0: unknown); false when rev does not fit.
func (s store) apply(writes []write, rev int64) (bool, store) {
	if rev != 0 && rev < s.rev {
		return false, s
	}
	for _, w := range writes {
		k := w.Key
		if w.Op == "delete" && !s.has(k) {
			continue // deleting nothing changes nothing
		}
		ok, mod := changed(rev, s.mods[k])
		if !ok {
			return false, s
		}
		s.mods[k] = mod
		if w.Op == "put" {
			s.present |= 1 << k
			s.values[k] = w.Value
		} else {
			s.present &^= 1 << k
			s.values[k] = ""
		}
	}
	if rev > s.rev {
		s.rev = rev
	}
	return true, s
}

func stepStore(keys []string) func(state, in, out interface{}) (bool, interface{}) {
	index := map[string]int{}
	for n, k := range keys {
		index[k] = n
	}
	return func(state, in, out interface{}) (bool, interface{}) {
		s := state.(store)
		i := in.(input)
		o := out.(output)
		k := i.KeyIdx
		switch i.Op {
		case "get":
			return o.Unknown || s.sees(k, read{o.Found, o.Value, o.Mod}, o.Rev), s
		case "put":
			return s.apply([]write{{"put", k, i.Value}}, o.Rev)
		case "delete":
			if !o.Unknown && o.Deleted != map[bool]int{true: 1, false: 0}[s.has(k)] {
				return false, s
			}
			if !s.has(k) {
				return o.Unknown || o.Rev == 0 || o.Rev >= s.rev, s
			}
			return s.apply([]write{{"delete", k, ""}}, o.Rev)
		case "cas":
			i = input{Op: "txn", Compare: []compare{{k, i.Expect}}, Success: []write{{"put", k, i.Value}}}
			if !o.Unknown && !o.Succeeded {
				o.Reads = []read{{o.Found, o.Value, o.Mod}}
			}
			fallthrough
		case "txn":
			holds := true
			for _, c := range i.Compare {
				if !matches(s.has(c.Key), s.values[c.Key], c.Value) {
					holds = false
					break
				}
			}
			if !o.Unknown && o.Succeeded != holds {
				return false, s
			}
			if holds {
				return s.apply(i.Success, o.Rev)
			}
			if o.Unknown {
				return true, s
			}
			if len(o.Reads) != len(i.Compare) {
				return false, s
			}
			for n, c := range i.Compare {
				if !s.sees(c.Key, o.Reads[n], o.Rev) {
					return false, s
				}
			}
			return true, s
		case "range":
			if o.Unknown {
				return true, s
			}
			if o.Rev != 0 && o.Rev < s.rev {
				return false, s
			}
			count := 0
			for n := range keys {
				if s.has(n) {
					count++
				}
			}
			if len(o.KVs) != count {
				return false, s
			}
			for key, r := range o.KVs {
				n, known := index[key]
				if !known || !r.Found || !s.sees(n, r, 0) {
					return false, s
				}
			}
			return true, s
		}
		panic("unknown operation " + i.Op)
	}
}

func multiModel(keys []string) porcupine.Model {
	describeState := func(state interface{}) string {
		s := state.(store)
		kvs := map[string]read{}
		for n, k := range keys {
			if s.has(n) {
				kvs[k] = s.read(n)
			}
		}
		return describeKVs(kvs) + fmt.Sprintf(" rev %d", s.rev)
	}
	return porcupine.Model{
		Init:  func() interface{} { return store{} },
		Step:  stepStore(keys),
		Equal: func(a, b interface{}) bool { return a.(store) == b.(store) },
		DescribeOperation: func(in, out interface{}) string {
			i := in.(input)
			o := out.(output)
			switch i.Op {
			case "txn":
				parts := make([]string, 0, len(i.Compare)+len(i.Success)+1)
				for _, c := range i.Compare {
					expect := "absent"
					if c.Value != nil {
						expect = fmt.Sprintf("%q", *c.Value)
					}
					parts = append(parts, fmt.Sprintf("%s==%s", keys[c.Key], expect))
				}
				parts = append(parts, "then")
				for _, w := range i.Success {
					if w.Op == "put" {
						parts = append(parts, fmt.Sprintf("put(%s, %q)", keys[w.Key], w.Value))
					} else {
						parts = append(parts, fmt.Sprintf("delete(%s)", keys[w.Key]))
					}
				}
				return "txn(" + strings.Join(parts, " ") + ") -> " + describeOutput(i, o)
			case "range":
				return "get_prefix -> " + describeOutput(i, o)
			}
			return describeSingle(in, out)
		},
		DescribeState: describeState,
	}
}

// --- reading, checking, reporting --------------------------------------------------

func load(path string) (header, []record, error) {
	file, err := os.Open(path)
	if err != nil {
		return header{}, nil, err
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<26)
	var head header
	var records []record
	first := true
	for scanner.Scan() {
		line := scanner.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		if first {
			first = false
			if err := json.Unmarshal(line, &head); err != nil {
				return head, nil, fmt.Errorf("header: %w", err)
			}
			continue
		}
		var r record
		if err := json.Unmarshal(line, &r); err != nil {
			return head, nil, fmt.Errorf("operation %d: %w", len(records)+1, err)
		}
		records = append(records, r)
	}
	if err := scanner.Err(); err != nil {
		return head, nil, err
	}
	if head.Model != "single" && head.Model != "multi" {
		return head, nil, fmt.Errorf("header: model %q (want single or multi)", head.Model)
	}
	if head.Model == "multi" && len(head.Keys) > maxKeys {
		return head, nil, fmt.Errorf("header: %d keys (at most %d)", len(head.Keys), maxKeys)
	}
	return head, records, nil
}

func operations(records []record) []porcupine.Operation {
	ops := make([]porcupine.Operation, len(records))
	for n, r := range records {
		ret := int64(math.MaxInt64)
		if r.Return != nil {
			ret = *r.Return
		}
		ops[n] = porcupine.Operation{
			ClientId: r.Client, Input: r.In, Call: r.Call, Output: r.Out, Return: ret, Metadata: r.ID,
		}
	}
	return ops
}

func resultName(result porcupine.CheckResult) string {
	switch result {
	case porcupine.Ok:
		return "ok"
	case porcupine.Illegal:
		return "illegal"
	}
	return "unknown"
}

func main() {
	timeout := flag.Duration("timeout", 5*time.Minute, "give up (result unknown, exit 1) after this long")
	visualize := flag.Bool("visualize", false, "write the HTML visualisation even when the history is linearizable")
	htmlPath := flag.String("html", "", "where the visualisation goes (default: the history's path with .html)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s [flags] HISTORY\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	path := flag.Arg(0)
	if *htmlPath == "" {
		*htmlPath = strings.TrimSuffix(path, ".jsonl") + ".html"
	}
	head, records, err := load(path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "porcupine-check: %s: %v\n", path, err)
		os.Exit(2)
	}
	unknown := 0
	for _, r := range records {
		if r.Return == nil {
			unknown++
		}
	}
	fmt.Printf("history %s: model %s, %d operations (%d unknown)\n", path, head.Model, len(records), unknown)

	// the parts checked on their own: one per key (single), or the whole history
	var model porcupine.Model
	parts := map[string][]record{}
	if head.Model == "single" {
		model = singleModel()
		for _, r := range records {
			parts[r.Key] = append(parts[r.Key], r)
		}
	} else {
		model = multiModel(head.Keys)
		parts["*"] = records
	}
	names := make([]string, 0, len(parts))
	for name := range parts {
		names = append(names, name)
	}
	sort.Strings(names)

	started := time.Now()
	deadline := started.Add(*timeout)
	overall := porcupine.Ok
	var failing []porcupine.Operation
	var failingNames []string
	for _, name := range names {
		left := time.Until(deadline)
		result := porcupine.Unknown
		partStarted := time.Now()
		ops := operations(parts[name])
		if left > 0 {
			result = porcupine.CheckOperationsTimeout(model, ops, left)
		}
		fmt.Printf("  key %s: %d operations: %s (%.3fs)\n", name, len(ops), resultName(result), time.Since(partStarted).Seconds())
		if result != porcupine.Ok {
			failingNames = append(failingNames, name)
			failing = append(failing, ops...)
			if overall == porcupine.Ok || result == porcupine.Illegal {
				overall = result
			}
		}
	}
	took := time.Since(started)
	fmt.Printf("result: %s, %d operations checked in %.3fs\n", resultName(overall), len(records), took.Seconds())

	if overall != porcupine.Ok || *visualize {
		shown := failing
		if *visualize {
			shown = operations(records)
		}
		vizModel := model
		if head.Model == "single" {
			vizModel.Partition = func(history []porcupine.Operation) [][]porcupine.Operation {
				byKey := map[string][]porcupine.Operation{}
				var order []string
				for _, op := range history {
					key := op.Input.(input).Key
					if _, seen := byKey[key]; !seen {
						order = append(order, key)
					}
					byKey[key] = append(byKey[key], op)
				}
				sort.Strings(order)
				out := make([][]porcupine.Operation, len(order))
				for n, key := range order {
					out[n] = byKey[key]
				}
				return out
			}
		}
		// the verbose check keeps every partial linearization: bounded, its memory too
		vizTimeout := *timeout
		if vizTimeout > 15*time.Second {
			vizTimeout = 15 * time.Second
		}
		_, info := porcupine.CheckOperationsVerbose(vizModel, shown, vizTimeout)
		if err := porcupine.VisualizePath(vizModel, info, *htmlPath); err != nil {
			fmt.Fprintf(os.Stderr, "porcupine-check: visualisation: %v\n", err)
		} else {
			fmt.Printf("visualisation: %s (keys %s)\n", *htmlPath, strings.Join(failingNames, ", "))
		}
	}
	if overall != porcupine.Ok {
		os.Exit(1)
	}
}
