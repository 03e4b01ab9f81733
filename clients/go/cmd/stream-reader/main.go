// Command stream-reader opens many StreamTasks streams through the Go client
// and keeps count of what they receive: bench/stream-fanout's Go reader.
//
// It takes commands as JSON lines on stdin and answers each with one JSON
// line on stdout carrying the command's id (answers to waits may come out of
// order). It starts by printing {"msg":"stream-reader ready"} (the protocol:
// internal/benchio).
//
//	{"id":1,"cmd":"open","group":"g","url":"http://127.0.0.1:7420","connections":16,"measuring":true,"requests":[<StreamTasksRequest as JSON>,...]}
//	    opens one stream per request, round-robin over `connections` HTTP/2
//	    connections of the group's own; answers once all calls are started.
//	    measuring (default true): whether to record latencies.
//	{"id":2,"cmd":"stats","group":"g","from":0,"to":100}
//	    the group's counts; with from/to, also the least lastSequence and
//	    received of streams [from, to).
//	{"id":3,"cmd":"latency","group":"g","reset":true}
//	    count, p50, p99, max of commit-to-receipt latency (ms) since the last
//	    reset; with reset, starts over after answering.
//	{"id":4,"cmd":"measuring","group":"g","on":false}   whether to record latencies
//	{"id":5,"cmd":"wait","group":"g","live":1100,"timeoutMs":60000}
//	{"id":6,"cmd":"wait","group":"g","from":0,"to":1,"received":10000,"lastSequence":123,"timeoutMs":60000}
//	    answers when every condition given holds (live: that many streams got
//	    snapshot_complete; received / lastSequence: every stream in [from, to)
//	    has at least that), when a stream of the group failed, or at the
//	    timeout; "ok" says which. Conditions are checked every millisecond.
//	{"id":7,"cmd":"close","group":"g"}   cancels the group's streams, waits for them, closes its connections
//
// Every message is decoded into the generated Go types (connect-go's gRPC
// client with its stock protobuf-go codec, as a user's would). Each group's
// connections read their response bodies through a buffer (bufferedBodies),
// and the garbage collector runs at GOGC=400 unless the environment says
// otherwise. Latency is receipt time minus the event's event_time, in whole
// milliseconds as bench/stream-fanout's Node readers count it. Order: after
// snapshot_complete (or from the first message, with after_sequence) every
// event's sequence must exceed the last event's, snapshot_complete's and
// heartbeat's; each exception counts in orderErrors.
//
// With STREAM_READER_CPUPROFILE=<file> in its environment, it writes a CPU
// profile (pprof) of its whole life to that file when it exits (exit command,
// or stdin closed): `go tool pprof -top <binary> <file>`.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
	"taskstream.dev/clients/go/gen/taskstream/v1/taskstreamv1connect"
	"taskstream.dev/clients/go/internal/benchio"
	"taskstream.dev/clients/go/taskstream"
)

type command struct {
	Group       string            `json:"group"`
	URL         string            `json:"url"`
	Connections int               `json:"connections"`
	Requests    []json.RawMessage `json:"requests"`
	From        *int              `json:"from"`
	To          *int              `json:"to"`
	Reset       bool              `json:"reset"`
	On          bool              `json:"on"`
	Measuring   *bool             `json:"measuring"`
	Live        *int64            `json:"live"`
	Received    *int64            `json:"received"`
	LastSeq     *int64            `json:"lastSequence"`
	TimeoutMs   int64             `json:"timeoutMs"`
}

func main() {
	// Every message decodes into fresh objects (the event, its Task's Struct
	// args and their map), garbage a moment later; the reader holds little
	// else. Collecting at 4x the live heap instead of 2x halves the
	// collector's share of the CPU for a few MiB. GOGC in the environment wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if path := os.Getenv("STREAM_READER_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "stream-reader:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "stream-reader:", err)
			os.Exit(1)
		}
		defer f.Close()
		defer pprof.StopCPUProfile()
	}
	groups := map[string]*group{}
	var mu sync.Mutex
	get := func(name string) *group {
		mu.Lock()
		defer mu.Unlock()
		return groups[name]
	}
	benchio.Serve("stream-reader", func(id int64, cmd string, line []byte) {
		var c command
		if err := json.Unmarshal(line, &c); err != nil {
			benchio.Answer(id, nil, fmt.Errorf("bad command: %v", err))
			return
		}
		fail := func(err error) { benchio.Answer(id, nil, err) }
		g := get(c.Group)
		if cmd != "open" && g == nil {
			fail(fmt.Errorf("no group %q", c.Group))
			return
		}
		switch cmd {
		case "open":
			if g != nil {
				fail(fmt.Errorf("group %q is open", c.Group))
				return
			}
			g, err := openGroup(c)
			if err != nil {
				fail(err)
				return
			}
			mu.Lock()
			groups[c.Group] = g
			mu.Unlock()
			benchio.Answer(id, map[string]any{"streams": len(g.streams)}, nil)
		case "stats":
			benchio.Answer(id, g.stats(c.From, c.To), nil)
		case "latency":
			r := g.latency.summary()
			if c.Reset {
				g.latency.reset()
			}
			benchio.Answer(id, r, nil)
		case "measuring":
			g.measuring.Store(c.On)
			benchio.Answer(id, nil, nil)
		case "wait":
			go func() {
				ok := g.wait(c)
				r := g.stats(c.From, c.To)
				r["id"], r["ok"] = id, ok
				benchio.Reply(r)
			}()
		case "close":
			mu.Lock()
			delete(groups, c.Group)
			mu.Unlock()
			go func() {
				g.close()
				benchio.Answer(id, nil, nil)
			}()
		default:
			fail(fmt.Errorf("unknown command %q", cmd))
		}
	})
}

// stream is one StreamTasks call's counts. Only its own goroutine writes
// them, and each stream has its cache line to itself, so counting costs no
// contended atomic; stats sums them when asked.
type stream struct {
	received     atomic.Int64
	lastSequence atomic.Int64
	latency      *histogram // the shard this stream records into
	_            [40]byte
}

// latencyShards: streams record latencies into histogram shards by index, so
// that two cores rarely update the same shard's counters at once.
const latencyShards = 8

type group struct {
	clients []taskstreamv1connect.TaskServiceClient
	https   []*http.Client
	streams []*stream
	cancel  context.CancelFunc
	done    sync.WaitGroup

	heartbeats  atomic.Int64
	live        atomic.Int64
	ended       atomic.Int64
	orderErrors atomic.Int64
	measuring   atomic.Bool
	latency     shardedHistogram

	errMu      sync.Mutex
	errors     []string
	errorCount int
	firstOrder string
}

// bufferedBodies reads each response body through a buffer of its own: a
// stream's messages come out of it, where connect-go would otherwise make two
// reads of the HTTP/2 body (its 5-byte prefix, then the message) per message,
// each taking the stream's and the connection's locks.
type bufferedBodies struct{ base http.RoundTripper }

type bufferedBody struct {
	*bufio.Reader
	io.Closer
}

func (t bufferedBodies) RoundTrip(r *http.Request) (*http.Response, error) {
	res, err := t.base.RoundTrip(r)
	if err == nil {
		res.Body = bufferedBody{bufio.NewReaderSize(res.Body, 8<<10), res.Body}
	}
	return res, err
}

func (t bufferedBodies) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// newClient is taskstream.NewClient's TaskService (connect-go's gRPC client on
// its own HTTP/2 connection), its response bodies buffered.
func newClient(url string) (taskstreamv1connect.TaskServiceClient, *http.Client) {
	h := taskstream.NewHTTPClient(nil)
	h.Transport = bufferedBodies{h.Transport}
	return taskstreamv1connect.NewTaskServiceClient(h, url, connect.WithGRPC()), h
}

func openGroup(c command) (*group, error) {
	if c.Connections < 1 {
		c.Connections = 1
	}
	requests := make([]*taskstreamv1.StreamTasksRequest, len(c.Requests))
	for i, raw := range c.Requests {
		requests[i] = new(taskstreamv1.StreamTasksRequest)
		if err := protojson.Unmarshal(raw, requests[i]); err != nil {
			return nil, fmt.Errorf("request %d: %w", i, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &group{cancel: cancel}
	g.measuring.Store(c.Measuring == nil || *c.Measuring)
	for range c.Connections {
		client, h := newClient(c.URL)
		g.clients = append(g.clients, client)
		g.https = append(g.https, h)
	}
	for i, req := range requests {
		s := &stream{latency: &g.latency[i%latencyShards]}
		g.streams = append(g.streams, s)
		g.done.Add(1)
		go func() {
			defer g.done.Done()
			defer g.ended.Add(1)
			if err := g.read(ctx, g.clients[i%len(g.clients)], req, s); err != nil && ctx.Err() == nil {
				g.errMu.Lock()
				g.errorCount++
				if len(g.errors) < 5 {
					g.errors = append(g.errors, fmt.Sprintf("stream %d: %v", i, err))
				}
				g.errMu.Unlock()
			}
		}()
	}
	return g, nil
}

// read consumes one stream until it ends or ctx is cancelled.
func (g *group) read(ctx context.Context, client taskstreamv1connect.TaskServiceClient, req *taskstreamv1.StreamTasksRequest, s *stream) error {
	call, err := client.StreamTasks(ctx, connect.NewRequest(req))
	if err != nil {
		return err
	}
	defer call.Close()
	// ordered: past the snapshot, where sequences must increase; floor: the
	// sequence every later event must exceed.
	ordered := req.AfterSequence != nil
	floor := req.GetAfterSequence()
	// last: s.lastSequence, which only this goroutine writes.
	var last int64
	for call.Receive() {
		switch m := call.Msg().Message.(type) {
		case *taskstreamv1.StreamTasksResponse_Event:
			e := m.Event
			s.received.Add(1)
			seq := e.GetSequence()
			if ordered {
				if seq <= floor {
					g.orderError(fmt.Sprintf("event %d after %d", seq, floor))
				}
				floor = seq
			}
			if seq > last {
				last = seq
				s.lastSequence.Store(seq)
			}
			if g.measuring.Load() {
				if t := e.GetEventTime(); t != nil {
					now := time.Now().UnixNano()
					s.latency.add(float64(now-(t.GetSeconds()*1e9+int64(t.GetNanos()))) / 1e6)
				}
			}
		case *taskstreamv1.StreamTasksResponse_SnapshotComplete:
			seq := m.SnapshotComplete.GetSequence()
			ordered, floor = true, seq
			if seq > last {
				last = seq
				s.lastSequence.Store(seq)
			}
			g.live.Add(1)
		case *taskstreamv1.StreamTasksResponse_Heartbeat:
			g.heartbeats.Add(1)
			if ordered {
				seq := m.Heartbeat.GetSequence()
				if seq < floor {
					g.orderError(fmt.Sprintf("heartbeat %d after %d", seq, floor))
				}
				floor = max(floor, seq)
			}
		}
	}
	if err := call.Err(); err != nil {
		return err
	}
	if ctx.Err() == nil {
		return errors.New("the server ended the stream")
	}
	return nil
}

func (g *group) orderError(what string) {
	g.orderErrors.Add(1)
	g.errMu.Lock()
	if g.firstOrder == "" {
		g.firstOrder = what
	}
	g.errMu.Unlock()
}

func (g *group) stats(from, to *int) map[string]any {
	g.errMu.Lock()
	errs := append([]string{}, g.errors...)
	errorCount, firstOrder := g.errorCount, g.firstOrder
	g.errMu.Unlock()
	var deliveries int64
	for _, s := range g.streams {
		deliveries += s.received.Load()
	}
	r := map[string]any{
		"deliveries":  deliveries,
		"heartbeats":  g.heartbeats.Load(),
		"live":        g.live.Load(),
		"ended":       g.ended.Load(),
		"orderErrors": g.orderErrors.Load(),
		"firstOrder":  firstOrder,
		"errors":      errs,
		"errorCount":  errorCount,
	}
	if lo, hi, ok := g.span(from, to); ok {
		minSeq, minReceived := int64(math.MaxInt64), int64(math.MaxInt64)
		for _, s := range g.streams[lo:hi] {
			minSeq = min(minSeq, s.lastSequence.Load())
			minReceived = min(minReceived, s.received.Load())
		}
		r["minLastSequence"], r["minReceived"] = minSeq, minReceived
	}
	return r
}

func (g *group) span(from, to *int) (int, int, bool) {
	if from == nil || to == nil {
		return 0, 0, false
	}
	lo, hi := max(0, *from), min(len(g.streams), *to)
	return lo, hi, lo < hi
}

func (g *group) wait(c command) bool {
	deadline := time.Now().Add(time.Duration(c.TimeoutMs) * time.Millisecond)
	lo, hi, spanned := g.span(c.From, c.To)
	holds := func() bool {
		if c.Live != nil && g.live.Load() < *c.Live {
			return false
		}
		if spanned && (c.Received != nil || c.LastSeq != nil) {
			for _, s := range g.streams[lo:hi] {
				if c.Received != nil && s.received.Load() < *c.Received {
					return false
				}
				if c.LastSeq != nil && s.lastSequence.Load() < *c.LastSeq {
					return false
				}
			}
		}
		return true
	}
	failed := func() bool {
		g.errMu.Lock()
		defer g.errMu.Unlock()
		return g.errorCount > 0
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		if holds() {
			return true
		}
		if failed() || time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
}

func (g *group) close() {
	g.cancel()
	g.done.Wait()
	for _, h := range g.https {
		h.CloseIdleConnections()
	}
}

// histogram counts latencies in whole milliseconds, 0 to 120 s, like
// bench/stream-fanout's Histogram.
type histogram struct {
	counts [120_001]atomic.Uint32
	count  atomic.Int64
	max    atomic.Int64
}

func (h *histogram) add(ms float64) {
	i := int64(math.Floor(ms + 0.5)) // Math.round
	i = min(max(i, 0), 120_000)
	h.counts[i].Add(1)
	h.count.Add(1)
	for {
		m := h.max.Load()
		if i <= m || h.max.CompareAndSwap(m, i) {
			break
		}
	}
}

// shardedHistogram is latencyShards histograms read as one.
type shardedHistogram [latencyShards]histogram

func (sh *shardedHistogram) reset() {
	for i := range sh {
		sh[i].reset()
	}
}

func (sh *shardedHistogram) summary() map[string]any {
	var count, maxMs int64
	for i := range sh {
		count += sh[i].count.Load()
		maxMs = max(maxMs, sh[i].max.Load())
	}
	quantile := func(q float64) any {
		if count == 0 {
			return nil
		}
		rank := int64(math.Ceil(q * float64(count)))
		var seen int64
		for i := range sh[0].counts {
			for j := range sh {
				seen += int64(sh[j].counts[i].Load())
			}
			if seen >= rank {
				return i
			}
		}
		return maxMs
	}
	return map[string]any{"count": count, "p50": quantile(0.5), "p99": quantile(0.99), "max": maxMs}
}

func (h *histogram) reset() {
	for i := range h.counts {
		h.counts[i].Store(0)
	}
	h.count.Store(0)
	h.max.Store(0)
}
