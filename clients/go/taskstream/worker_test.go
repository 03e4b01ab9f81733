package taskstream_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
	"taskstream.dev/clients/go/taskstream"
)

// workerTest is one test's fresh server and a client on it. The worker
// tests run in parallel, each with its own server.
type workerTest struct {
	t      *testing.T
	ctx    context.Context
	client *taskstream.Client
	srv    *server
}

func newWorkerTest(t *testing.T) *workerTest {
	t.Parallel()
	return newWorkerTestOn(t, startServer(t))
}

func newWorkerTestOn(t *testing.T, srv *server) *workerTest {
	client := taskstream.NewClient(srv.URL)
	t.Cleanup(client.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return &workerTest{t: t, ctx: ctx, client: client, srv: srv}
}

// runningWorker is a Worker's Run in a goroutine.
type runningWorker struct {
	cancel context.CancelFunc
	ended  chan error
}

// run starts a worker; the test's cleanup stops it.
func (wt *workerTest) run(handlers map[string]taskstream.Handler, opts ...taskstream.WorkerOption) *runningWorker {
	wt.t.Helper()
	return wt.runWith(wt.client, "go-worker", handlers, opts...)
}

// runWith starts a worker on client, as workerID.
func (wt *workerTest) runWith(client *taskstream.Client, workerID string, handlers map[string]taskstream.Handler, opts ...taskstream.WorkerOption) *runningWorker {
	wt.t.Helper()
	w, err := taskstream.NewWorker(client, workerID, handlers, opts...)
	if err != nil {
		wt.t.Fatalf("NewWorker: %v", err)
	}
	ctx, cancel := context.WithCancel(wt.ctx)
	rw := &runningWorker{cancel: cancel, ended: make(chan error, 1)}
	go func() { rw.ended <- w.Run(ctx) }()
	wt.t.Cleanup(func() { cancel(); <-rw.ended })
	return rw
}

// stop ends Run's ctx and returns what Run returned, and how long it took.
func (wt *workerTest) stop(rw *runningWorker) (error, time.Duration) {
	wt.t.Helper()
	start := time.Now()
	rw.cancel()
	select {
	case err := <-rw.ended:
		rw.ended <- err // for the cleanup
		return err, time.Since(start)
	case <-time.After(10 * time.Second):
		wt.t.Fatal("Run did not return within 10 s of its ctx ending")
		return nil, 0
	}
}

func (wt *workerTest) dispatch(req *taskstreamv1.DispatchTaskRequest) *taskstreamv1.Task {
	wt.t.Helper()
	res, err := wt.client.Tasks.DispatchTask(wt.ctx, connect.NewRequest(req))
	if err != nil {
		wt.t.Fatalf("DispatchTask %s: %v", req.GetToolName(), err)
	}
	return res.Msg.GetTask()
}

func (wt *workerTest) get(taskID string) *taskstreamv1.Task {
	wt.t.Helper()
	res, err := wt.client.Tasks.GetTask(wt.ctx, connect.NewRequest(&taskstreamv1.GetTaskRequest{TaskId: taskID}))
	if err != nil {
		wt.t.Fatalf("GetTask: %v", err)
	}
	return res.Msg.GetTask()
}

// waitStatus polls the task until it has status want; another terminal
// status, or the test's deadline, fails the test.
func (wt *workerTest) waitStatus(taskID string, want taskstreamv1.TaskStatus) *taskstreamv1.Task {
	wt.t.Helper()
	for {
		task := wt.get(taskID)
		if task.GetStatus() == want {
			return task
		}
		if task.GetStatus() >= taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED {
			wt.t.Fatalf("task %s ended %v (error %v), want %v", task.GetToolName(), task.GetStatus(), task.GetError(), want)
		}
		select {
		case <-wt.ctx.Done():
			wt.t.Fatalf("task %s still %v, want %v", task.GetToolName(), task.GetStatus(), want)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (wt *workerTest) events(taskID string) []*taskstreamv1.TaskEvent {
	wt.t.Helper()
	res, err := wt.client.Tasks.ListTaskEvents(wt.ctx, connect.NewRequest(&taskstreamv1.ListTaskEventsRequest{TaskId: taskID, PageSize: 1000}))
	if err != nil {
		wt.t.Fatalf("ListTaskEvents: %v", err)
	}
	return res.Msg.GetEvents()
}

func kinds(events []*taskstreamv1.TaskEvent) string {
	names := make([]string, len(events))
	for i, e := range events {
		names[i] = kindOf(e)
	}
	return strings.Join(names, " ")
}

// receive waits up to 5 s for a value a handler sends.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s within 5 s", what)
		var zero T
		return zero
	}
}

func args(kv ...string) *structpb.Struct {
	fields := map[string]*structpb.Value{}
	for i := 0; i+1 < len(kv); i += 2 {
		fields[kv[i]] = structpb.NewStringValue(kv[i+1])
	}
	return &structpb.Struct{Fields: fields}
}

// retrySoon is a retry policy whose first retry comes after 10 ms.
var retrySoon = &taskstreamv1.RetryPolicy{InitialDelay: durationpb.New(10 * time.Millisecond)}

// Starting a server takes seconds on a busy machine, so related scenarios
// share one test's server, each with its own worker and tool names.

func TestWorkerCompletes(t *testing.T) {
	wt := newWorkerTest(t)
	completesWithOutputs(wt)
	concurrencyLimit(wt)
	claimsOnlyItsTools(wt)
	claimErrorEndsRun(wt)
}

func TestWorkerCancels(t *testing.T) {
	wt := newWorkerTest(t)
	cancelRequested(wt)
	timesOut(wt)
}

func TestWorkerLongTasks(t *testing.T) {
	wt := newWorkerTest(t)
	keepsLeaseWithHeartbeats(wt)
	suspendsAndResumes(wt)
}

func TestWorkerStops(t *testing.T) {
	wt := newWorkerTest(t)
	stopWithinGrace(wt)
	stopPastGrace(wt)
}

// completesWithOutputs: the handler sees the args, its value completes the
// task, and its ReportOutput chunks are events between running and completed.
func completesWithOutputs(wt *workerTest) {
	t := wt.t
	wt.run(map[string]taskstream.Handler{"echo": func(ctx context.Context, job *taskstream.Job) (any, error) {
		for _, chunk := range []string{"one", "two"} {
			if err := job.ReportOutput(ctx, chunk); err != nil {
				return nil, err
			}
		}
		// A struct and a []string: converted through encoding/json.
		return struct {
			Echo    string   `json:"echo"`
			Attempt int32    `json:"attempt"`
			Tags    []string `json:"tags"`
		}{job.Task.GetArgs().GetFields()["q"].GetStringValue(), job.Task.GetAttempt(), []string{"a"}}, nil
	}})
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "echo", Args: args("q", "hello")})

	done := wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	want := map[string]any{"echo": "hello", "attempt": 1.0, "tags": []any{"a"}}
	if got := done.GetResult().AsInterface(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("result %v, want %v", got, want)
	}
	events := wt.events(task.GetTaskId())
	if got := kinds(events); got != "queued running output output completed" {
		t.Fatalf("events %q, want the outputs between running and completed", got)
	}
	if a, b := events[2].GetOutput().GetOutput().GetStringValue(), events[3].GetOutput().GetOutput().GetStringValue(); a != "one" || b != "two" {
		t.Fatalf("outputs %q %q, want one two", a, b)
	}
	if worker := events[1].GetRunning().GetWorkerId(); worker != "go-worker" {
		t.Fatalf("running event's worker %q, want go-worker", worker)
	}
}

func TestWorkerRetriesAndFailures(t *testing.T) {
	wt := newWorkerTest(t)
	var badCalls atomic.Int32
	wt.run(map[string]taskstream.Handler{
		"flaky": func(ctx context.Context, job *taskstream.Job) (any, error) {
			if job.Task.GetAttempt() == 1 {
				return nil, errors.New("flaky once")
			}
			return fmt.Sprintf("attempt %d", job.Task.GetAttempt()), nil
		},
		"bad": func(ctx context.Context, job *taskstream.Job) (any, error) {
			badCalls.Add(1)
			return nil, &taskstream.Failure{Message: "bad input", Code: "BAD", Details: map[string]any{"field": "q"}}
		},
		"panics": func(ctx context.Context, job *taskstream.Job) (any, error) { panic("boom") },
		// Deeper than the server stores (32 levels).
		"deep": func(ctx context.Context, job *taskstream.Job) (any, error) {
			var value any = 1.0
			for range 40 {
				value = map[string]any{"a": value}
			}
			return value, nil
		},
	})
	one := int32(1)
	three := int32(3)
	flaky := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "flaky", MaxRetries: &one, RetryPolicy: retrySoon})
	bad := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "bad", MaxRetries: &three, RetryPolicy: retrySoon})
	panics := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "panics"})
	deep := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "deep"})

	done := wt.waitStatus(flaky.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	if done.GetAttempt() != 2 || done.GetResult().GetStringValue() != "attempt 2" {
		t.Fatalf("flaky: attempt %d, result %v; want attempt 2 to complete", done.GetAttempt(), done.GetResult())
	}
	var firstFailure *taskstreamv1.TaskError
	for _, e := range wt.events(flaky.GetTaskId()) {
		if e.GetFailed() != nil {
			firstFailure = e.GetFailed().GetError()
		}
	}
	if firstFailure.GetMessage() != "flaky once" || !firstFailure.GetRetryable() {
		t.Fatalf("flaky's failure %v, want a retryable \"flaky once\"", firstFailure)
	}

	failed := wt.waitStatus(bad.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_FAILED)
	taskErr := failed.GetError()
	if taskErr.GetCode() != "BAD" || taskErr.GetMessage() != "bad input" || taskErr.GetRetryable() || taskErr.GetDetails().AsMap()["field"] != "q" {
		t.Fatalf("bad's error %v, want code BAD, message \"bad input\", not retryable, details", taskErr)
	}
	if failed.GetAttempt() != 1 || badCalls.Load() != 1 {
		t.Fatalf("bad ran %d times (attempt %d): a non-retryable Failure must not be retried", badCalls.Load(), failed.GetAttempt())
	}

	panicked := wt.waitStatus(panics.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_FAILED).GetError()
	if panicked.GetMessage() != "panic: boom" || !panicked.GetRetryable() || !strings.Contains(panicked.GetStack(), "worker_test.go") {
		t.Fatalf("panic's error %v, want a retryable \"panic: boom\" with its stack", panicked)
	}

	// A result the server refuses fails the task at once, rather than leaving it to its lease.
	refused := wt.waitStatus(deep.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_FAILED).GetError()
	if refused.GetCode() != "INVALID_ARGUMENT" || !strings.HasPrefix(refused.GetMessage(), "CompleteTask refused: result: nests lists and objects more than 32 levels deep") {
		t.Fatalf("deep's error %v, want INVALID_ARGUMENT, \"CompleteTask refused: result: ...\"", refused)
	}
}

// concurrencyLimit: 20 tasks, never more than 3 handlers at once, all complete.
func concurrencyLimit(wt *workerTest) {
	t := wt.t
	var running, most atomic.Int32
	wt.run(map[string]taskstream.Handler{"work": func(ctx context.Context, job *taskstream.Job) (any, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		time.Sleep(50 * time.Millisecond)
		return nil, nil
	}}, taskstream.WithConcurrency(3))
	var requests []*taskstreamv1.DispatchTaskRequest
	for i := range 20 {
		requests = append(requests, &taskstreamv1.DispatchTaskRequest{ToolName: "work", ToolCallId: fmt.Sprint(i)})
	}
	res, err := wt.client.Tasks.DispatchTasks(wt.ctx, connect.NewRequest(&taskstreamv1.DispatchTasksRequest{Requests: requests}))
	if err != nil {
		t.Fatalf("DispatchTasks: %v", err)
	}
	for _, r := range res.Msg.GetResults() {
		wt.waitStatus(r.GetDispatched().GetTask().GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	}
	if got := most.Load(); got != 3 {
		t.Fatalf("at most %d handlers ran at once, want 3 (the concurrency)", got)
	}
}

// waitForCancel is a handler that waits for its ctx and sends why it ended.
func waitForCancel(started chan<- string, reasons chan<- string) taskstream.Handler {
	return func(ctx context.Context, job *taskstream.Job) (any, error) {
		started <- job.Task.GetTaskId()
		<-ctx.Done()
		reasons <- job.CancelReason()
		return nil, ctx.Err()
	}
}

// cancelRequested: CancelTask reaches the handler through a heartbeat and the
// task ends CANCELLED.
func cancelRequested(wt *workerTest) {
	t := wt.t
	started, reasons := make(chan string, 1), make(chan string, 1)
	wt.run(map[string]taskstream.Handler{"wait": waitForCancel(started, reasons)},
		taskstream.WithLeaseDuration(1500*time.Millisecond))
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "wait"})
	receive(t, started, "handler start")

	cancelled := time.Now()
	if _, err := wt.client.Tasks.CancelTask(wt.ctx, connect.NewRequest(&taskstreamv1.CancelTaskRequest{TaskId: task.GetTaskId(), Reason: "changed my mind"})); err != nil {
		t.Fatalf("CancelTask: %v", err)
	}
	if reason := receive(t, reasons, "cancel"); reason != "cancel requested" {
		t.Fatalf("cancel reason %q, want \"cancel requested\"", reason)
	}
	if waited := time.Since(cancelled); waited > 3*time.Second {
		t.Fatalf("the handler saw the cancel after %v; heartbeats are every 0.5 s", waited)
	}
	wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_CANCELLED)
}

// keepsLeaseWithHeartbeats: a 3 s handler outlives its 1 s lease at attempt 1.
func keepsLeaseWithHeartbeats(wt *workerTest) {
	t := wt.t
	var calls atomic.Int32
	wt.run(map[string]taskstream.Handler{"slow": func(ctx context.Context, job *taskstream.Job) (any, error) {
		calls.Add(1)
		select {
		case <-time.After(3 * time.Second):
			return "slept", nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}}, taskstream.WithLeaseDuration(time.Second))
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "slow"})

	done := wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	if done.GetAttempt() != 1 || done.GetResult().GetStringValue() != "slept" || calls.Load() != 1 {
		t.Fatalf("attempt %d, result %v, %d calls; want attempt 1 to outlive its 1 s lease", done.GetAttempt(), done.GetResult(), calls.Load())
	}
}

// suspendsAndResumes: Suspend, then ResumeTask runs the handler again with
// the resume data.
func suspendsAndResumes(wt *workerTest) {
	t := wt.t
	var calls atomic.Int32
	wt.run(map[string]taskstream.Handler{"approve": func(ctx context.Context, job *taskstream.Job) (any, error) {
		calls.Add(1)
		if job.Task.GetResumeData() == nil {
			return nil, fmt.Errorf("waiting for a human: %w", taskstream.Suspend(map[string]any{"question": "ship it?"}))
		}
		return map[string]any{"answer": job.Task.GetResumeData().AsInterface()}, nil
	}})
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "approve"})

	suspended := wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_SUSPENDED)
	if q := suspended.GetSuspendPayload().GetStructValue().GetFields()["question"].GetStringValue(); q != "ship it?" {
		t.Fatalf("suspend payload %v, want the handler's question", suspended.GetSuspendPayload())
	}
	_, err := wt.client.Tasks.ResumeTask(wt.ctx, connect.NewRequest(&taskstreamv1.ResumeTaskRequest{TaskId: task.GetTaskId(), ResumeData: structpb.NewStringValue("yes")}))
	if err != nil {
		t.Fatalf("ResumeTask: %v", err)
	}
	done := wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	if answer := done.GetResult().GetStructValue().GetFields()["answer"].GetStringValue(); answer != "yes" || calls.Load() != 2 {
		t.Fatalf("result %v after %d calls, want the resume data in the second call's result", done.GetResult(), calls.Load())
	}
}

// timesOut: a task past its timeout cancels its handler and ends TIMED_OUT;
// the worker goes on.
func timesOut(wt *workerTest) {
	t := wt.t
	started, reasons := make(chan string, 1), make(chan string, 1)
	rw := wt.run(map[string]taskstream.Handler{
		"stuck": waitForCancel(started, reasons),
		"quick": func(ctx context.Context, job *taskstream.Job) (any, error) { return "quick", nil },
	}, taskstream.WithLeaseDuration(1500*time.Millisecond))
	stuck := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "stuck", Timeout: durationpb.New(time.Second)})
	receive(t, started, "handler start")

	if reason := receive(t, reasons, "cancel after the timeout"); reason != "cancel requested" {
		t.Fatalf("cancel reason %q, want \"cancel requested\"", reason)
	}
	wt.waitStatus(stuck.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_TIMED_OUT)

	quick := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "quick"})
	wt.waitStatus(quick.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	select {
	case err := <-rw.ended:
		t.Fatalf("Run ended after a timeout: %v", err)
	default:
	}
}

// stopWithinGrace: a handler that finishes within the grace completes its task.
func stopWithinGrace(wt *workerTest) {
	t := wt.t
	started := make(chan string, 1)
	rw := wt.run(map[string]taskstream.Handler{"finish": func(ctx context.Context, job *taskstream.Job) (any, error) {
		started <- job.Task.GetTaskId()
		select {
		case <-time.After(500 * time.Millisecond):
			return "finished", nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}}, taskstream.WithShutdownGrace(5*time.Second))
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "finish"})
	receive(t, started, "handler start")

	// The claim long-poll (20 s) is aborted; the handler's 0.5 s are waited for.
	err, took := wt.stop(rw)
	if err != nil || took > 3*time.Second {
		t.Fatalf("Run returned %v after %v, want nil once the handler finished", err, took)
	}
	done := wt.get(task.GetTaskId())
	if done.GetStatus() != taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED || done.GetResult().GetStringValue() != "finished" {
		t.Fatalf("task %v (%v) when Run returned, want COMPLETED", done.GetStatus(), done.GetError())
	}
}

// stopPastGrace: a handler past the grace is cancelled and its task failed
// retryable; Run returns without waiting for it.
func stopPastGrace(wt *workerTest) {
	t := wt.t
	started, reasons, release := make(chan string, 1), make(chan string, 1), make(chan struct{})
	rw := wt.run(map[string]taskstream.Handler{"stubborn": func(ctx context.Context, job *taskstream.Job) (any, error) {
		started <- job.Task.GetTaskId()
		<-ctx.Done()
		reasons <- job.CancelReason()
		<-release // outlives its cancel: Run must not wait for it, nor report its value
		return "too late", nil
	}}, taskstream.WithShutdownGrace(200*time.Millisecond))
	defer close(release)
	one := int32(1)
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "stubborn", MaxRetries: &one})
	receive(t, started, "handler start")

	err, took := wt.stop(rw)
	if err != nil || took > 3*time.Second {
		t.Fatalf("Run returned %v after %v, want nil soon after the 0.2 s grace", err, took)
	}
	if reason := receive(t, reasons, "cancel"); reason != "worker stopping" {
		t.Fatalf("cancel reason %q, want \"worker stopping\"", reason)
	}
	pending := wt.get(task.GetTaskId())
	if pending.GetStatus() != taskstreamv1.TaskStatus_TASK_STATUS_PENDING || pending.GetAttempt() != 2 {
		t.Fatalf("task %v at attempt %d when Run returned, want PENDING for attempt 2", pending.GetStatus(), pending.GetAttempt())
	}
	events := wt.events(task.GetTaskId())
	failure := events[len(events)-1].GetFailed().GetError()
	if failure.GetMessage() != "worker stopping" || !failure.GetRetryable() {
		t.Fatalf("last event %v, want a retryable \"worker stopping\" failure", events[len(events)-1])
	}
}

// claimsOnlyItsTools: a task of another tool stays PENDING.
func claimsOnlyItsTools(wt *workerTest) {
	t := wt.t
	wt.run(map[string]taskstream.Handler{"mine": func(ctx context.Context, job *taskstream.Job) (any, error) { return nil, nil }})
	other := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "not-mine"})
	mine := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "mine"})

	wt.waitStatus(mine.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	time.Sleep(300 * time.Millisecond) // the worker is back in its long-poll
	if task := wt.get(other.GetTaskId()); task.GetStatus() != taskstreamv1.TaskStatus_TASK_STATUS_PENDING || task.GetWorkerId() != "" {
		t.Fatalf("another tool's task is %v (worker %q), want PENDING and unclaimed", task.GetStatus(), task.GetWorkerId())
	}
}

// claimErrorEndsRun: a claim refused as invalid is not retried; Run returns it.
func claimErrorEndsRun(wt *workerTest) {
	t := wt.t
	tooLong := strings.Repeat("x", 300) // the server refuses tool names over 256 characters
	rw := wt.run(map[string]taskstream.Handler{tooLong: func(ctx context.Context, job *taskstream.Job) (any, error) { return nil, nil }})
	err := receive(t, rw.ended, "end of Run")
	rw.ended <- err // for the cleanup
	if connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Fatalf("Run returned %v, want the claim's INVALID_ARGUMENT", err)
	}
}

func TestNewWorkerValidates(t *testing.T) {
	client := taskstream.NewClient("http://127.0.0.1:1")
	defer client.Close()
	noop := map[string]taskstream.Handler{"tool": func(context.Context, *taskstream.Job) (any, error) { return nil, nil }}
	cases := map[string]func() (*taskstream.Worker, error){
		"no worker id": func() (*taskstream.Worker, error) { return taskstream.NewWorker(client, "", noop) },
		"no handlers":  func() (*taskstream.Worker, error) { return taskstream.NewWorker(client, "w", nil) },
		"nil handler": func() (*taskstream.Worker, error) {
			return taskstream.NewWorker(client, "w", map[string]taskstream.Handler{"tool": nil})
		},
		"concurrency 0": func() (*taskstream.Worker, error) {
			return taskstream.NewWorker(client, "w", noop, taskstream.WithConcurrency(0))
		},
		"no claim wait": func() (*taskstream.Worker, error) {
			return taskstream.NewWorker(client, "w", noop, taskstream.WithClaimWait(0))
		},
	}
	for name, build := range cases {
		if w, err := build(); err == nil || w != nil {
			t.Errorf("%s: NewWorker gave %v, %v; want an error", name, w, err)
		}
	}
	if _, err := taskstream.NewWorker(client, "w", noop, taskstream.WithLeaseDuration(time.Second)); err != nil {
		t.Errorf("valid worker: %v", err)
	}
}
