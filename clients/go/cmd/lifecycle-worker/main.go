// Command lifecycle-worker is bench/lifecycle's workers through the Go
// client: the Go twin of bench/lifecycle/worker.ts (same calls, same counts),
// so that the bench's clients take less of the machine from the server they
// measure.
//
// It takes commands as JSON lines on stdin and answers each with one JSON
// line on stdout carrying the command's id. It starts by printing
// {"msg":"lifecycle-worker ready"}.
//
//	{"id":1,"cmd":"start","url":"http://127.0.0.1:7420","toolName":"bench-tool","loops":8,"connections":1,"maxTasks":100,"waitMs":1000,"completeBatch":100}
//	    {"id":1,"ok":true}
//	{"id":2,"cmd":"stop"}
//	    {"id":2,"ok":true,"result":{"claimCalls":309,"emptyClaims":1,"claimed":30000,"completed":30000,"errors":0}}
//	{"id":3,"cmd":"exit"}
//
// start opens `connections` clients (one HTTP/2 connection each) and starts
// `loops` claim loops over them, loop i on connection i % connections; it
// answers once the loops run. Each loop long-polls ClaimTasks (worker_id
// bench-worker-<pid>-<i>, tool_names [toolName], max_tasks maxTasks, wait
// waitMs) and completes every task it got, result "ok": with completeBatch 1
// one CompleteTask per task, otherwise CompleteTasks calls of up to
// completeBatch tasks, all of a batch's calls in flight at once; then claims
// again. stop cancels the claims in flight, waits for the loops to end and
// answers the counts. A failed call counts one error, and so does an item of
// CompleteTasks answered with an error; errors after stop (the cancelled
// long-polls) do not count. (The bench reads the process's CPU from /proc.)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
	"taskstream.dev/clients/go/internal/benchio"
	"taskstream.dev/clients/go/taskstream"
)

// command is start's line: worker.ts's WorkerConfig.
type command struct {
	URL           string `json:"url"`
	ToolName      string `json:"toolName"`
	Loops         int    `json:"loops"`
	Connections   int    `json:"connections"`
	MaxTasks      int32  `json:"maxTasks"`
	WaitMs        int64  `json:"waitMs"`
	CompleteBatch int    `json:"completeBatch"`
}

// stats is worker.ts's "stats" message.
type stats struct {
	ClaimCalls  int64  `json:"claimCalls"`
	EmptyClaims int64  `json:"emptyClaims"`
	Claimed     int64  `json:"claimed"`
	Completed   int64  `json:"completed"`
	Errors      int64  `json:"errors"`
	FirstError  string `json:"firstError,omitempty"`
}

func main() {
	var w *workers
	benchio.Serve("lifecycle-worker", func(id int64, cmd string, line []byte) {
		switch cmd {
		case "start":
			var c command
			if err := json.Unmarshal(line, &c); err != nil {
				benchio.Answer(id, nil, fmt.Errorf("bad start: %w", err))
			} else if w != nil {
				benchio.Answer(id, nil, errors.New("already started"))
			} else if c.URL == "" || c.ToolName == "" || c.Loops < 1 || c.Connections < 1 || c.MaxTasks < 1 || c.WaitMs < 0 || c.CompleteBatch < 1 {
				benchio.Answer(id, nil, fmt.Errorf("bad start: %s", line))
			} else {
				w = start(c)
				benchio.Answer(id, nil, nil)
			}
		case "stop":
			if w == nil {
				benchio.Answer(id, nil, errors.New("not started"))
			} else {
				benchio.Answer(id, map[string]any{"result": w.stop()}, nil)
			}
		default:
			benchio.Answer(id, nil, fmt.Errorf("unknown cmd %q", cmd))
		}
	})
}

// workers is a started run: its loops and counts.
type workers struct {
	c      command
	ctx    context.Context
	cancel context.CancelFunc
	loops  sync.WaitGroup

	claimCalls, emptyClaims, claimed, completed, errs atomic.Int64
	firstErrorOnce                                    sync.Once
	firstError                                        string
}

// result is the value every completion reports, as worker.ts's.
var result = structpb.NewStringValue("ok")

func start(c command) *workers {
	w := &workers{c: c}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	clients := make([]*taskstream.Client, c.Connections)
	for i := range clients {
		clients[i] = taskstream.NewClient(c.URL)
	}
	wait := durationpb.New(time.Duration(c.WaitMs) * time.Millisecond)
	for i := range c.Loops {
		w.loops.Add(1)
		go func() {
			defer w.loops.Done()
			w.loop(clients[i%len(clients)], "bench-worker-"+strconv.Itoa(os.Getpid())+"-"+strconv.Itoa(i), wait)
		}()
	}
	return w
}

// failed counts an error (the first one's message kept), unless the run is stopping.
func (w *workers) failed(msg string) {
	if w.ctx.Err() != nil {
		return
	}
	w.errs.Add(1)
	w.firstErrorOnce.Do(func() { w.firstError = msg })
}

func (w *workers) loop(client *taskstream.Client, workerID string, wait *durationpb.Duration) {
	for w.ctx.Err() == nil {
		w.claimCalls.Add(1)
		res, err := client.Workers.ClaimTasks(w.ctx, connect.NewRequest(&taskstreamv1.ClaimTasksRequest{
			WorkerId:  workerID,
			ToolNames: []string{w.c.ToolName},
			MaxTasks:  w.c.MaxTasks,
			Wait:      wait,
		}))
		if err != nil {
			if connect.CodeOf(err) != connect.CodeCanceled {
				w.failed(err.Error())
			}
			continue
		}
		tasks := res.Msg.GetTasks()
		if len(tasks) == 0 {
			w.emptyClaims.Add(1)
		}
		w.claimed.Add(int64(len(tasks)))
		requests := make([]*taskstreamv1.CompleteTaskRequest, len(tasks))
		for i, t := range tasks {
			requests[i] = &taskstreamv1.CompleteTaskRequest{TaskId: t.GetTask().GetTaskId(), LeaseId: t.GetLease().GetLeaseId(), Result: result}
		}
		// Completions are not cancelled by stop, as worker.ts's are not.
		var calls sync.WaitGroup
		if w.c.CompleteBatch == 1 {
			for _, r := range requests {
				calls.Go(func() {
					if _, err := client.Workers.CompleteTask(context.Background(), connect.NewRequest(r)); err != nil {
						w.failed(err.Error())
					} else {
						w.completed.Add(1)
					}
				})
			}
		} else {
			for i := 0; i < len(requests); i += w.c.CompleteBatch {
				batch := requests[i:min(len(requests), i+w.c.CompleteBatch)]
				calls.Go(func() {
					res, err := client.Workers.CompleteTasks(context.Background(), connect.NewRequest(&taskstreamv1.CompleteTasksRequest{Requests: batch}))
					if err != nil {
						w.failed(err.Error())
						return
					}
					for _, o := range res.Msg.GetResults() {
						if e := o.GetError(); e != nil {
							w.failed(e.GetMessage())
						} else {
							w.completed.Add(1)
						}
					}
				})
			}
		}
		calls.Wait()
	}
}

// stop cancels the long-polls, waits for every loop to end, and says what they did.
func (w *workers) stop() stats {
	w.cancel()
	w.loops.Wait()
	s := stats{
		ClaimCalls:  w.claimCalls.Load(),
		EmptyClaims: w.emptyClaims.Load(),
		Claimed:     w.claimed.Load(),
		Completed:   w.completed.Load(),
		Errors:      w.errs.Load(),
	}
	w.firstErrorOnce.Do(func() {})
	s.FirstError = w.firstError
	return s
}
