// Command list-reader times sequential ListTasks and GetTask calls through the
// Go client: bench/list-tasks's Go column, what the service delivers to a
// client that decodes fast.
//
// It takes commands as JSON lines on stdin and answers each with one JSON
// line on stdout carrying the command's id, in order. It starts by printing
// {"msg":"list-reader ready"} (the protocol: internal/benchio).
//
//	{"id":1,"cmd":"run","url":"http://127.0.0.1:7420","method":"ListTasks","gzip":true,
//	 "requests":[<ListTasksRequest as JSON>,...],"warmup":100,"samples":1000,"maxMs":15000,"minSamples":200}
//	    makes warmup calls, then up to samples timed ones, one at a time, call
//	    i sending requests[i % len(requests)] (the bench's case i). Like the
//	    bench's own measure(): the warm-up stops after 5 s (at least 10 calls),
//	    the timed calls once maxMs went by and minSamples were taken. Answers
//	    with each timed call's milliseconds ("ms"), the task ids of the first
//	    call's answer ("firstTaskIds", to check it is the page the others get)
//	    and the Go garbage collector's cycles and pause time during the timed
//	    calls. method is ListTasks or GetTask; gzip false asks the server not
//	    to compress (no grpc-accept-encoding: gzip).
//	{"id":2,"cmd":"exit"}
//
// Each call is connect-go's gRPC client (on one HTTP/2 connection per url and
// gzip setting, kept open across runs) decoding the whole response into the
// generated Go types (taskstreamv1.ListTasksResponse, its tasks' Struct args
// and all); the time is from the call to its decoded response.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
	"taskstream.dev/clients/go/internal/benchio"
	"taskstream.dev/clients/go/taskstream"
)

type command struct {
	URL        string            `json:"url"`
	Method     string            `json:"method"`
	Gzip       bool              `json:"gzip"`
	Requests   []json.RawMessage `json:"requests"`
	Warmup     int               `json:"warmup"`
	Samples    int               `json:"samples"`
	MaxMs      float64           `json:"maxMs"`
	MinSamples int               `json:"minSamples"`
}

// clientKey is one connection: the server's URL and whether it accepts gzip.
type clientKey struct {
	url  string
	gzip bool
}

func main() {
	clients := map[clientKey]*taskstream.Client{}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	benchio.Serve("list-reader", func(id int64, cmd string, line []byte) {
		var c command
		if err := json.Unmarshal(line, &c); err != nil || cmd != "run" {
			benchio.Answer(id, nil, fmt.Errorf("bad command %q: %v", cmd, err))
			return
		}
		key := clientKey{c.URL, c.Gzip}
		client := clients[key]
		if client == nil {
			var opts []connect.ClientOption
			if !c.Gzip {
				// nil constructors remove gzip: the client no longer accepts it.
				opts = append(opts, connect.WithAcceptCompression("gzip", nil, nil))
			}
			client = taskstream.NewClient(c.URL, opts...)
			clients[key] = client
		}
		r, err := run(client, c)
		benchio.Answer(id, r, err)
	})
}

// caller makes call i of a run and returns the task ids it got.
type caller func(ctx context.Context, i int) ([]string, error)

func newCaller(client *taskstream.Client, c command) (caller, error) {
	if len(c.Requests) == 0 {
		return nil, errors.New("no requests")
	}
	switch c.Method {
	case "ListTasks":
		reqs := make([]*taskstreamv1.ListTasksRequest, len(c.Requests))
		for i, raw := range c.Requests {
			reqs[i] = new(taskstreamv1.ListTasksRequest)
			if err := protojson.Unmarshal(raw, reqs[i]); err != nil {
				return nil, fmt.Errorf("request %d: %w", i, err)
			}
		}
		return func(ctx context.Context, i int) ([]string, error) {
			res, err := client.Tasks.ListTasks(ctx, connect.NewRequest(reqs[i%len(reqs)]))
			if err != nil {
				return nil, err
			}
			return taskIDs(res.Msg.GetTasks()...), nil
		}, nil
	case "GetTask":
		reqs := make([]*taskstreamv1.GetTaskRequest, len(c.Requests))
		for i, raw := range c.Requests {
			reqs[i] = new(taskstreamv1.GetTaskRequest)
			if err := protojson.Unmarshal(raw, reqs[i]); err != nil {
				return nil, fmt.Errorf("request %d: %w", i, err)
			}
		}
		return func(ctx context.Context, i int) ([]string, error) {
			res, err := client.Tasks.GetTask(ctx, connect.NewRequest(reqs[i%len(reqs)]))
			if err != nil {
				return nil, err
			}
			return taskIDs(res.Msg.GetTask()), nil
		}, nil
	}
	return nil, fmt.Errorf("unknown method %q", c.Method)
}

func taskIDs(tasks ...*taskstreamv1.Task) []string {
	ids := make([]string, len(tasks))
	for i, t := range tasks {
		ids[i] = t.GetTaskId()
	}
	return ids
}

func run(client *taskstream.Client, c command) (map[string]any, error) {
	call, err := newCaller(client, c)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	// The first call's page, to compare with what storage returns for it.
	first, err := call(ctx, 0)
	if err != nil {
		return nil, fmt.Errorf("call 0: %w", err)
	}
	warming := time.Now()
	for i := 0; i < c.Warmup; i++ {
		if _, err := call(ctx, i); err != nil {
			return nil, fmt.Errorf("warm-up call %d: %w", i, err)
		}
		if i >= 9 && time.Since(warming) > 5*time.Second {
			break
		}
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ms := make([]float64, 0, c.Samples)
	started := time.Now()
	for i := 0; i < c.Samples; i++ {
		t0 := time.Now()
		if _, err := call(ctx, c.Warmup+i); err != nil {
			return nil, fmt.Errorf("call %d: %w", c.Warmup+i, err)
		}
		ms = append(ms, float64(time.Since(t0).Nanoseconds())/1e6)
		if len(ms) >= c.MinSamples && float64(time.Since(started).Milliseconds()) > c.MaxMs {
			break
		}
	}
	elapsed := time.Since(started)
	runtime.ReadMemStats(&after)
	return map[string]any{
		"ms":           ms,
		"firstTaskIds": first,
		"gcCycles":     after.NumGC - before.NumGC,
		"gcPauseShare": float64(after.PauseTotalNs-before.PauseTotalNs) / float64(elapsed.Nanoseconds()),
	}, nil
}
