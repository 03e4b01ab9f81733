// Command producer dispatches tasks at a steady target rate through the Go
// client: bench/stream-fanout's producer, the Go twin of
// bench/stream-fanout/producer.ts (same requests, same pacing, same result),
// so that the load generator takes less of the machine from the server and
// the stream clients it measures.
//
// It takes requests as JSON lines on stdin and answers each, in order, with
// one JSON line on stdout carrying the request's id. It starts by printing
// {"msg":"producer ready"} (the protocol: internal/benchio).
//
//	{"id":1,"url":"http://127.0.0.1:7420","rate":200,"seconds":8,"concurrency":32,"batch":50,"tickMs":10,"agents":1000,"tag":"p1-0"}
//	    {"id":1,"ok":true,"result":{"dispatched":1600,"errors":0,"seconds":8.01,"lastSequence":..,"rpcP50Ms":..,"rpcP99Ms":..,"cpuCores":..}}
//	{"id":2,"cmd":"exit"}
//
// A run dispatches with claim, so every dispatch writes two events (queued,
// running), each to agent-<random in [0, agents)>. Every tickMs, and whenever
// a call returns, the dispatches due by then (floor(elapsed * rate) + 1 in
// all) go out in DispatchTasks calls of at most batch, with at most
// concurrency calls in flight; rate 0 keeps concurrency calls of batch in
// flight. After `seconds` no call starts; the run ends when the last one
// returned. A result that is not `dispatched` counts as an error, and so does
// a failed call (once); firstError is the first one's message. rpcP50Ms /
// rpcP99Ms are over the calls that answered; cpuCores is this process's CPU
// seconds (getrusage) over the run's seconds.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
	"taskstream.dev/clients/go/internal/benchio"
	"taskstream.dev/clients/go/taskstream"
)

// request is producer.ts's ProduceRequest.
type request struct {
	URL         string  `json:"url"`
	Rate        float64 `json:"rate"`
	Seconds     float64 `json:"seconds"`
	Concurrency int     `json:"concurrency"`
	Batch       int     `json:"batch"`
	TickMs      float64 `json:"tickMs"`
	Agents      int     `json:"agents"`
	Tag         string  `json:"tag"`
}

// result is producer.ts's ProduceResult; NaN quantiles (no call answered) are null.
type result struct {
	Dispatched   int64    `json:"dispatched"`
	Errors       int64    `json:"errors"`
	FirstError   string   `json:"firstError,omitempty"`
	Seconds      float64  `json:"seconds"`
	LastSequence int64    `json:"lastSequence"`
	RPCP50Ms     *float64 `json:"rpcP50Ms"`
	RPCP99Ms     *float64 `json:"rpcP99Ms"`
	CPUCores     float64  `json:"cpuCores"`
}

func main() {
	// One client (one HTTP/2 connection) per server, kept across runs, as producer.ts keeps its transports.
	clients := map[string]*taskstream.Client{}
	benchio.Serve("producer", func(id int64, _ string, line []byte) {
		var r request
		if err := json.Unmarshal(line, &r); err != nil {
			benchio.Answer(id, nil, fmt.Errorf("bad request: %v", err))
			return
		}
		if r.URL == "" || r.Seconds <= 0 || r.Concurrency < 1 || r.Batch < 1 || r.TickMs <= 0 || r.Agents < 1 || r.Rate < 0 {
			benchio.Answer(id, nil, fmt.Errorf("bad request: %s", line))
			return
		}
		client := clients[r.URL]
		if client == nil {
			client = taskstream.NewClient(r.URL)
			clients[r.URL] = client
		}
		benchio.Answer(id, map[string]any{"result": produce(client, r)}, nil)
	})
}

// answer is one DispatchTasks call's outcome, handed back to the pacing loop.
type answer struct {
	ms  float64
	res *taskstreamv1.DispatchTasksResponse
	err error
}

// What every bench dispatch asks (producer.ts's dispatchShape): a claim, and a lease and timeout that outlast the run.
const toolName, workerID = "bench-tool", "bench-producer"

var day = durationpb.New(24 * time.Hour)

// dispatch is dispatch n of a run: producer.ts's request for it.
func dispatch(r *request, n int64) *taskstreamv1.DispatchTaskRequest {
	return &taskstreamv1.DispatchTaskRequest{
		ToolName:   toolName,
		ToolCallId: r.Tag + "-" + strconv.FormatInt(n, 10),
		AgentId:    "agent-" + strconv.Itoa(rand.IntN(r.Agents)),
		RunId:      "run-" + strconv.FormatInt(n%97, 10),
		Args: &structpb.Struct{Fields: map[string]*structpb.Value{
			"query": structpb.NewStringValue("bench task " + strconv.FormatInt(n, 10)),
			"n":     structpb.NewNumberValue(float64(n)),
		}},
		Claim:   &taskstreamv1.ClaimOptions{WorkerId: workerID, LeaseDuration: day},
		Timeout: day,
	}
}

func produce(client *taskstream.Client, r request) result {
	cpu0 := benchio.CPUSeconds()
	started := time.Now()
	endAt := started.Add(time.Duration(r.Seconds * float64(time.Second)))
	answers := make(chan answer, r.Concurrency)
	var (
		rpcMs                         []float64
		issued, dispatched, errs, seq int64
		firstError                    string
		hasFirstError                 bool
		inFlight                      int
	)
	noteError := func(msg string) {
		errs++
		if !hasFirstError {
			firstError, hasFirstError = msg, true
		}
	}
	pump := func() {
		now := time.Now()
		if !now.Before(endAt) {
			return
		}
		allowed := int64(math.MaxInt64)
		if r.Rate > 0 {
			allowed = int64(math.Floor(now.Sub(started).Seconds()*r.Rate)) + 1
		}
		for inFlight < r.Concurrency && issued < allowed {
			first := issued
			issued = min(allowed, issued+int64(r.Batch))
			inFlight++
			batch := make([]*taskstreamv1.DispatchTaskRequest, 0, issued-first)
			for n := first; n < issued; n++ {
				batch = append(batch, dispatch(&r, n))
			}
			go func() {
				t0 := time.Now()
				res, err := client.Tasks.DispatchTasks(context.Background(), connect.NewRequest(&taskstreamv1.DispatchTasksRequest{Requests: batch}))
				a := answer{ms: float64(time.Since(t0).Nanoseconds()) / 1e6, err: err}
				if err == nil {
					a.res = res.Msg
				}
				answers <- a
			}()
		}
	}
	ticker := time.NewTicker(time.Duration(r.TickMs * float64(time.Millisecond)))
	defer ticker.Stop()
	end := time.NewTimer(time.Until(endAt))
	defer end.Stop()
	ended := false
	pump()
	for !ended || inFlight > 0 {
		select {
		case <-ticker.C:
			pump()
		case <-end.C:
			ended = true
		case a := <-answers:
			inFlight--
			if a.err != nil {
				noteError(a.err.Error())
			} else {
				rpcMs = append(rpcMs, a.ms)
				for _, res := range a.res.GetResults() {
					d, ok := res.GetOutcome().(*taskstreamv1.DispatchTaskResult_Dispatched)
					if !ok {
						// As producer.ts: an outcome without a message (none at all) leaves firstError for a later one.
						if e := res.GetError(); e != nil {
							noteError(e.GetMessage())
						} else {
							errs++
						}
						continue
					}
					dispatched++
					if s := d.Dispatched.GetTask().GetSequence(); s > seq {
						seq = s
					}
				}
			}
			pump()
		}
	}
	seconds := time.Since(started).Seconds()
	slices.Sort(rpcMs)
	q := func(p float64) *float64 {
		if len(rpcMs) == 0 {
			return nil
		}
		i := min(len(rpcMs)-1, max(0, int(math.Ceil(p*float64(len(rpcMs))))-1))
		return &rpcMs[i]
	}
	return result{
		Dispatched:   dispatched,
		Errors:       errs,
		FirstError:   firstError,
		Seconds:      seconds,
		LastSequence: seq,
		RPCP50Ms:     q(0.5),
		RPCP99Ms:     q(0.99),
		CPUCores:     (benchio.CPUSeconds() - cpu0) / seconds,
	}
}
