// Command lifecycle-producer is bench/lifecycle's producers through the Go
// client: the Go twin of bench/lifecycle/producer.ts (same requests, same
// calls in flight, same result), so that the bench's clients take less of the
// machine from the server they measure.
//
// It takes commands as JSON lines on stdin and answers each with one JSON
// line on stdout carrying the command's id. It starts by printing
// {"msg":"lifecycle-producer ready"}.
//
//	{"id":1,"cmd":"start","url":"http://127.0.0.1:7420","toolName":"bench-tool","total":30000,"concurrency":8,"connections":1,"agents":16,"plain":false,"batch":100}
//	    {"id":1,"ok":true}
//	{"id":2,"cmd":"go"}
//	    {"id":2,"ok":true,"result":{"startMs":..,"endMs":..,"dispatched":30000,"errors":0,"cpuSeconds":0.9}}
//	{"id":3,"cmd":"exit"}
//
// start opens `connections` clients (one HTTP/2 connection each, opened by a
// GetTask of a task that does not exist, before the clock starts). go
// dispatches `total` tasks: `concurrency` lanes, lane i on connection
// i % connections, each taking the next `batch` tasks and sending them in one
// DispatchTasks call (with batch 1, one DispatchTask), until none are left;
// it answers when every lane is done. Task i is tool_name toolName,
// agent_id agent-<i % agents>, tool_call_id call-<i>, run_id
// run-<i / 100>, args {query: "tide tables", n: i}; with plain, tool_name
// and args only. A result that is not `dispatched` counts one error; a
// failed call counts one per task it carried; firstError is the first one's
// message. startMs and endMs are wall-clock milliseconds (Unix epoch) at the
// start and end of the run; cpuSeconds is this process's CPU time
// (getrusage) over it. go runs while commands are still read, so exit ends
// the process at any time.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/structpb"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
	"taskstream.dev/clients/go/internal/benchio"
	"taskstream.dev/clients/go/taskstream"
)

// command is start's line: producer.ts's ProducerConfig.
type command struct {
	URL         string `json:"url"`
	ToolName    string `json:"toolName"`
	Total       int    `json:"total"`
	Concurrency int    `json:"concurrency"`
	Connections int    `json:"connections"`
	Agents      int    `json:"agents"`
	Plain       bool   `json:"plain"`
	Batch       int    `json:"batch"`
}

// done is producer.ts's "done" message.
type done struct {
	StartMs    int64   `json:"startMs"`
	EndMs      int64   `json:"endMs"`
	Dispatched int64   `json:"dispatched"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"firstError,omitempty"`
	CPUSeconds float64 `json:"cpuSeconds"`
}

func main() {
	var (
		config  *command
		clients []*taskstream.Client
		running bool
	)
	benchio.Serve("lifecycle-producer", func(id int64, cmd string, line []byte) {
		switch cmd {
		case "start":
			var c command
			if err := json.Unmarshal(line, &c); err != nil {
				benchio.Answer(id, nil, fmt.Errorf("bad start: %w", err))
			} else if config != nil {
				benchio.Answer(id, nil, errors.New("already started"))
			} else if c.URL == "" || c.ToolName == "" || c.Total < 1 || c.Concurrency < 1 || c.Connections < 1 || c.Agents < 1 || c.Batch < 1 {
				benchio.Answer(id, nil, fmt.Errorf("bad start: %s", line))
			} else {
				config = &c
				clients = openClients(c)
				benchio.Answer(id, nil, nil)
			}
		case "go":
			if config == nil || running {
				benchio.Answer(id, nil, errors.New("not started, or already running"))
				return
			}
			running = true
			go func() { benchio.Answer(id, map[string]any{"result": run(*config, clients)}, nil) }()
		default:
			benchio.Answer(id, nil, fmt.Errorf("unknown cmd %q", cmd))
		}
	})
}

// openClients opens the run's connections: a GetTask of a task that does not exist (NOT_FOUND) on each.
func openClients(c command) []*taskstream.Client {
	clients := make([]*taskstream.Client, c.Connections)
	var wg sync.WaitGroup
	for i := range clients {
		clients[i] = taskstream.NewClient(c.URL)
		wg.Go(func() {
			_, _ = clients[i].Tasks.GetTask(context.Background(), connect.NewRequest(&taskstreamv1.GetTaskRequest{TaskId: "warm-up"}))
		})
	}
	wg.Wait()
	return clients
}

// request is task i's dispatch, as producer.ts's request(i).
func request(c *command, i int) *taskstreamv1.DispatchTaskRequest {
	args := &structpb.Struct{Fields: map[string]*structpb.Value{
		"query": structpb.NewStringValue("tide tables"),
		"n":     structpb.NewNumberValue(float64(i)),
	}}
	if c.Plain {
		return &taskstreamv1.DispatchTaskRequest{ToolName: c.ToolName, Args: args}
	}
	return &taskstreamv1.DispatchTaskRequest{
		ToolName:   c.ToolName,
		AgentId:    "agent-" + strconv.Itoa(i%c.Agents),
		ToolCallId: "call-" + strconv.Itoa(i),
		RunId:      "run-" + strconv.Itoa(i/100),
		Args:       args,
	}
}

func run(c command, clients []*taskstream.Client) done {
	var (
		mu               sync.Mutex // guards next and the counts below
		next             int
		dispatched, errs int64
		firstError       string
		hasFirstError    bool
		lanes            sync.WaitGroup
	)
	failed := func(msg string, n int64) {
		mu.Lock()
		defer mu.Unlock()
		errs += n
		if !hasFirstError {
			firstError, hasFirstError = msg, true
		}
	}
	started := time.Now()
	cpu0 := benchio.CPUSeconds()
	for lane := range c.Concurrency {
		client := clients[lane%len(clients)]
		lanes.Go(func() {
			for {
				mu.Lock()
				first := next
				if first >= c.Total {
					mu.Unlock()
					return
				}
				next = min(c.Total, first+c.Batch)
				last := next
				mu.Unlock()
				requests := make([]*taskstreamv1.DispatchTaskRequest, 0, last-first)
				for i := first; i < last; i++ {
					requests = append(requests, request(&c, i))
				}
				if c.Batch == 1 {
					if _, err := client.Tasks.DispatchTask(context.Background(), connect.NewRequest(requests[0])); err != nil {
						failed(err.Error(), 1)
					} else {
						mu.Lock()
						dispatched++
						mu.Unlock()
					}
					continue
				}
				res, err := client.Tasks.DispatchTasks(context.Background(), connect.NewRequest(&taskstreamv1.DispatchTasksRequest{Requests: requests}))
				if err != nil {
					failed(err.Error(), int64(len(requests)))
					continue
				}
				var ok int64
				for _, r := range res.Msg.GetResults() {
					if _, d := r.GetOutcome().(*taskstreamv1.DispatchTaskResult_Dispatched); d {
						ok++
					} else {
						failed(r.GetError().GetMessage(), 1)
					}
				}
				mu.Lock()
				dispatched += ok
				mu.Unlock()
			}
		})
	}
	lanes.Wait()
	return done{
		StartMs:    started.UnixMilli(),
		EndMs:      time.Now().UnixMilli(),
		Dispatched: dispatched,
		Errors:     errs,
		FirstError: firstError,
		CPUSeconds: benchio.CPUSeconds() - cpu0,
	}
}
