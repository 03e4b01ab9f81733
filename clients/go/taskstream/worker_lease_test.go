package taskstream_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
	"taskstream.dev/clients/go/gen/taskstream/v1/taskstreamv1connect"
	"taskstream.dev/clients/go/taskstream"
)

// settleNotes is a WorkerService client that notes the lease of each settle
// call (CompleteTask, FailTask, SuspendTask) made through it.
type settleNotes struct {
	taskstreamv1connect.WorkerServiceClient
	mu     sync.Mutex
	leases []string
}

func (n *settleNotes) note(lease string) {
	n.mu.Lock()
	n.leases = append(n.leases, lease)
	n.mu.Unlock()
}

func (n *settleNotes) noted() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slicesClone(n.leases)
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

func (n *settleNotes) CompleteTask(ctx context.Context, req *connect.Request[taskstreamv1.CompleteTaskRequest]) (*connect.Response[taskstreamv1.CompleteTaskResponse], error) {
	n.note(req.Msg.GetLeaseId())
	return n.WorkerServiceClient.CompleteTask(ctx, req)
}

func (n *settleNotes) FailTask(ctx context.Context, req *connect.Request[taskstreamv1.FailTaskRequest]) (*connect.Response[taskstreamv1.FailTaskResponse], error) {
	n.note(req.Msg.GetLeaseId())
	return n.WorkerServiceClient.FailTask(ctx, req)
}

func (n *settleNotes) SuspendTask(ctx context.Context, req *connect.Request[taskstreamv1.SuspendTaskRequest]) (*connect.Response[taskstreamv1.SuspendTaskResponse], error) {
	n.note(req.Msg.GetLeaseId())
	return n.WorkerServiceClient.SuspendTask(ctx, req)
}

// viaProxy is a client whose calls go through a proxy to the test's server,
// so that the test can stall them, and which notes its settle calls.
func (wt *workerTest) viaProxy() (*proxy, *taskstream.Client, *settleNotes) {
	p := startProxy(wt.t, wt.srv.Addr)
	client := taskstream.NewClient("http://" + p.Addr)
	wt.t.Cleanup(client.Close)
	notes := &settleNotes{WorkerServiceClient: client.Workers}
	client.Workers = notes
	return p, client, notes
}

// requeued waits until a stalled worker's lease ran out and the server's
// sweeper took the task back for attempt 2.
func (wt *workerTest) requeued(taskID string) {
	wt.t.Helper()
	if task := wt.waitStatus(taskID, taskstreamv1.TaskStatus_TASK_STATUS_PENDING); task.GetAttempt() != 2 {
		wt.t.Fatalf("task PENDING at attempt %d, want 2 (re-queued after its lease expired)", task.GetAttempt())
	}
}

func notEnded(t *testing.T, rw *runningWorker) {
	t.Helper()
	select {
	case err := <-rw.ended:
		t.Fatalf("Run ended: %v", err)
	default:
	}
}

func TestWorkerLosesLease(t *testing.T) {
	wt := newWorkerTest(t)
	leaseLostRetried(wt)
	leaseLostFinishedElsewhere(wt)
}

// leaseLostRetried: heartbeats stall past the lease; the sweeper re-queues
// the task; the first heartbeat that gets through is refused, which cancels
// the handler ("lease lost"), whose late value is not reported; the worker
// runs the retry and goes on.
func leaseLostRetried(wt *workerTest) {
	t := wt.t
	p, client, notes := wt.viaProxy()
	firstLease, reasons := make(chan string, 1), make(chan string, 1)
	rw := wt.runWith(client, "go-worker", map[string]taskstream.Handler{
		"lease-long": func(ctx context.Context, job *taskstream.Job) (any, error) {
			if job.Task.GetAttempt() > 1 {
				return fmt.Sprintf("attempt %d", job.Task.GetAttempt()), nil
			}
			firstLease <- job.Lease.GetLeaseId()
			<-ctx.Done()
			reasons <- job.CancelReason()
			return "late result of attempt 1", nil // must not be reported
		},
		"lease-quick": func(ctx context.Context, job *taskstream.Job) (any, error) { return "quick", nil },
	}, taskstream.WithLeaseDuration(1500*time.Millisecond), taskstream.WithClaimWait(time.Second))
	one := int32(1)
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "lease-long", MaxRetries: &one, RetryPolicy: retrySoon})
	lease := receive(t, firstLease, "attempt 1's start")

	p.setStalled(true)
	wt.requeued(task.GetTaskId())
	select {
	case reason := <-reasons:
		t.Fatalf("handler cancelled (%s) before a heartbeat got through", reason)
	default:
	}
	p.setStalled(false)
	if reason := receive(t, reasons, "attempt 1's cancel"); reason != "lease lost" {
		t.Fatalf("cancel reason %q, want \"lease lost\"", reason)
	}
	done := wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	if done.GetAttempt() != 2 || done.GetResult().GetStringValue() != "attempt 2" {
		t.Fatalf("attempt %d, result %v; want attempt 2's", done.GetAttempt(), done.GetResult())
	}
	events := wt.events(task.GetTaskId())
	if got := kinds(events); got != "queued running failed running completed" || events[2].GetFailed().GetError().GetCode() != "LEASE_EXPIRED" {
		t.Fatalf("events %q (%v), want a LEASE_EXPIRED failure, then the retry", got, events[2])
	}
	quick := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "lease-quick"})
	wt.waitStatus(quick.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	notEnded(t, rw)

	// Once Run returned, every settle call has been made.
	if err, _ := wt.stop(rw); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	leases := notes.noted()
	if len(leases) != 2 || strings.Contains(strings.Join(leases, " "), lease) {
		t.Fatalf("settle calls with leases %v; want 2 (the retry, the quick task), none with the lost lease %s", leases, lease)
	}
}

// leaseLostFinishedElsewhere: while worker A is cut off, worker B takes the
// re-queued task and completes it; A's heartbeat, once through, is refused,
// its handler cancelled and its error not reported; A goes on claiming.
func leaseLostFinishedElsewhere(wt *workerTest) {
	t := wt.t
	p, client, notes := wt.viaProxy()
	started, reasons := make(chan string, 1), make(chan string, 1)
	a := wt.runWith(client, "go-worker-a", map[string]taskstream.Handler{
		"elsewhere-long":  waitForCancel(started, reasons),
		"elsewhere-later": func(ctx context.Context, job *taskstream.Job) (any, error) { return "later", nil },
	}, taskstream.WithLeaseDuration(1500*time.Millisecond), taskstream.WithClaimWait(time.Second))
	one := int32(1)
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "elsewhere-long", MaxRetries: &one, RetryPolicy: retrySoon})
	receive(t, started, "A's handler start")

	p.setStalled(true)
	wt.requeued(task.GetTaskId())
	b := wt.runWith(wt.client, "go-worker-b", map[string]taskstream.Handler{
		"elsewhere-long": func(ctx context.Context, job *taskstream.Job) (any, error) { return "done by B", nil },
	})
	wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	wt.stop(b)

	p.setStalled(false)
	if reason := receive(t, reasons, "A's cancel"); reason != "lease lost" {
		t.Fatalf("cancel reason %q, want \"lease lost\"", reason)
	}
	later := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "elsewhere-later"})
	wt.waitStatus(later.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	notEnded(t, a)
	if err, _ := wt.stop(a); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	final := wt.get(task.GetTaskId())
	if final.GetStatus() != taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED || final.GetWorkerId() != "go-worker-b" || final.GetResult().GetStringValue() != "done by B" {
		t.Fatalf("task %v by %q (%v), want B's completion untouched", final.GetStatus(), final.GetWorkerId(), final.GetResult())
	}
	if leases := notes.noted(); len(leases) != 1 {
		t.Fatalf("A made %d settle calls, want 1 (the later task's)", len(leases))
	}
}

func TestWorkerRefusedOrExited(t *testing.T) {
	wt := newWorkerTest(t)
	refusedAsTooLarge(wt)
	handlerGoexit(wt)
}

func TestWorkerStarts(t *testing.T) {
	wt := newWorkerTest(t)
	unreachableAtStart(wt)
	stoppedBeforeRun(wt)
}

// refusedAsTooLarge: a result or an error over the server's 4 MiB per
// message fails the task at once, rather than leaving it to its lease.
func refusedAsTooLarge(wt *workerTest) {
	t := wt.t
	big := strings.Repeat("x", 5<<20)
	// A connection of its own: the server's HTTP/2 session refuses other streams while it takes in megabytes.
	client := taskstream.NewClient(wt.srv.URL)
	t.Cleanup(client.Close)
	wt.runWith(client, "go-worker", map[string]taskstream.Handler{
		"huge-result": func(ctx context.Context, job *taskstream.Job) (any, error) { return big, nil },
		"huge-error": func(ctx context.Context, job *taskstream.Job) (any, error) {
			return nil, errors.New("upstream said: " + big)
		},
	})
	one := int32(1)
	result := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "huge-result", MaxRetries: &one})
	failure := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "huge-error"})

	deadline := time.Now().Add(5 * time.Second) // well within the 30 s lease
	failed := wt.waitStatus(result.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_FAILED)
	taskErr := failed.GetError()
	if failed.GetAttempt() != 1 || taskErr.GetCode() != "MESSAGE_TOO_LARGE" || taskErr.GetRetryable() || taskErr.GetMessage() != "CompleteTask refused: request message larger than 4194304 bytes" {
		t.Fatalf("huge result: attempt %d, error %v; want MESSAGE_TOO_LARGE, \"CompleteTask refused: ...\" at attempt 1", failed.GetAttempt(), taskErr)
	}
	taskErr = wt.waitStatus(failure.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_FAILED).GetError()
	if taskErr.GetCode() != "MESSAGE_TOO_LARGE" || !taskErr.GetRetryable() || len(taskErr.GetMessage()) > 1200 ||
		!strings.HasPrefix(taskErr.GetMessage(), "FailTask refused: request message larger than 4194304 bytes; the error was: upstream said: xxx") {
		t.Fatalf("huge error: %.300v; want MESSAGE_TOO_LARGE, \"FailTask refused: ...; the error was: ...\", retryable, short", taskErr)
	}
	if time.Now().After(deadline) {
		t.Fatalf("the tasks failed after more than 5 s")
	}
}

// handlerGoexit: a handler that ends its goroutine (runtime.Goexit, as
// t.FailNow does) fails its task, and the worker goes on.
func handlerGoexit(wt *workerTest) {
	t := wt.t
	rw := wt.run(map[string]taskstream.Handler{
		"goexit": func(ctx context.Context, job *taskstream.Job) (any, error) {
			runtime.Goexit()
			return "unreachable", nil
		},
		"after": func(ctx context.Context, job *taskstream.Job) (any, error) { return "after", nil },
	}, taskstream.WithConcurrency(1))
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "goexit"})
	taskErr := wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_FAILED).GetError()
	if !strings.Contains(taskErr.GetMessage(), "runtime.Goexit") || !taskErr.GetRetryable() {
		t.Fatalf("error %v, want a retryable failure naming runtime.Goexit", taskErr)
	}
	// Its one slot is free again.
	after := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "after"})
	wt.waitStatus(after.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	if err, took := wt.stop(rw); err != nil || took > 3*time.Second {
		t.Fatalf("Run returned %v after %v", err, took)
	}
}

// unreachableAtStart: claims refused at first are retried; once the server
// can be reached, the worker works.
func unreachableAtStart(wt *workerTest) {
	t := wt.t
	p, client, _ := wt.viaProxy()
	p.setDown(true)
	rw := wt.runWith(client, "go-worker", map[string]taskstream.Handler{
		"reach": func(ctx context.Context, job *taskstream.Job) (any, error) { return "reached", nil },
	})
	time.Sleep(time.Second)
	notEnded(t, rw)
	p.setDown(false)
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "reach"})
	start := time.Now()
	wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("completed %v after the server could be reached", waited)
	}
}

// stoppedBeforeRun: Run with a ctx already done returns at once, claiming
// nothing; the same Worker runs again afterwards.
func stoppedBeforeRun(wt *workerTest) {
	t := wt.t
	w, err := taskstream.NewWorker(wt.client, "go-worker", map[string]taskstream.Handler{
		"later-run": func(ctx context.Context, job *taskstream.Job) (any, error) { return "ran", nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "later-run"})
	done, cancel := context.WithCancel(wt.ctx)
	cancel()
	start := time.Now()
	if err := w.Run(done); err != nil || time.Since(start) > 500*time.Millisecond {
		t.Fatalf("Run on a done ctx returned %v after %v", err, time.Since(start))
	}
	if status := wt.get(task.GetTaskId()).GetStatus(); status != taskstreamv1.TaskStatus_TASK_STATUS_PENDING {
		t.Fatalf("task %v, want PENDING: nothing claimed", status)
	}
	ctx, stop := context.WithCancel(wt.ctx)
	ended := make(chan error, 1)
	go func() { ended <- w.Run(ctx) }()
	wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	stop()
	stop()
	if err := receive(t, ended, "end of the second Run"); err != nil {
		t.Fatalf("second Run returned %v", err)
	}
}

// TestWorkerServerRestarts: the server stops and another starts on the same
// SQLite file and port while a handler runs; its heartbeats find the lease
// again, the task completes at attempt 1, and claims go on.
func TestWorkerServerRestarts(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("-short: no taskstream server")
	}
	database := t.TempDir() + "/taskstream.db"
	first := startServerOn(t, database, 0)
	wt := newWorkerTestOn(t, first)
	started, restarted := make(chan string, 1), make(chan struct{})
	rw := wt.run(map[string]taskstream.Handler{
		"through": func(ctx context.Context, job *taskstream.Job) (any, error) {
			started <- job.Task.GetTaskId()
			select {
			case <-restarted:
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
			// Past a heartbeat (every 5 s) on the new server. The lease (15 s)
			// outlasts a stop and a start on a loaded machine: at 6 s, a run of
			// the whole suite on a slow host once saw it expire in between.
			select {
			case <-time.After(5500 * time.Millisecond):
				return "survived", nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		},
		"after-restart": func(ctx context.Context, job *taskstream.Job) (any, error) { return "after", nil },
	}, taskstream.WithLeaseDuration(15*time.Second), taskstream.WithClaimWait(time.Second))
	task := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "through"})
	receive(t, started, "handler start")

	first.Stop()
	port := first.Addr[strings.LastIndex(first.Addr, ":")+1:]
	var portNumber int
	fmt.Sscan(port, &portNumber)
	startServerOn(t, database, portNumber)
	close(restarted)

	done := wt.waitStatus(task.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	if done.GetAttempt() != 1 || done.GetResult().GetStringValue() != "survived" {
		t.Fatalf("attempt %d, result %v (error %v); want attempt 1 to survive the restart", done.GetAttempt(), done.GetResult(), done.GetError())
	}
	after := wt.dispatch(&taskstreamv1.DispatchTaskRequest{ToolName: "after-restart"})
	wt.waitStatus(after.GetTaskId(), taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED)
	notEnded(t, rw)
}

// TestWorkerManyQuickTasks runs 300 quick tasks and checks that none of the
// worker's goroutines outlives Run. Not parallel: it counts every goroutine.
func TestWorkerManyQuickTasks(t *testing.T) {
	wt := newWorkerTestOn(t, startServer(t))
	var requests []*taskstreamv1.DispatchTaskRequest
	for i := range 300 {
		requests = append(requests, &taskstreamv1.DispatchTaskRequest{ToolName: "many", ToolCallId: fmt.Sprint(i)})
	}
	for i := 0; i < len(requests); i += 100 {
		if _, err := wt.client.Tasks.DispatchTasks(wt.ctx, connect.NewRequest(&taskstreamv1.DispatchTasksRequest{Requests: requests[i : i+100]})); err != nil {
			t.Fatalf("DispatchTasks: %v", err)
		}
	}
	rw := wt.run(map[string]taskstream.Handler{"many": func(ctx context.Context, job *taskstream.Job) (any, error) { return job.Task.GetToolCallId(), nil }},
		taskstream.WithLeaseDuration(time.Second))
	for {
		res, err := wt.client.Tasks.ListTasks(wt.ctx, connect.NewRequest(&taskstreamv1.ListTasksRequest{
			Statuses: []taskstreamv1.TaskStatus{taskstreamv1.TaskStatus_TASK_STATUS_COMPLETED}, PageSize: 1,
		}))
		if err != nil {
			t.Fatalf("ListTasks: %v", err)
		}
		if res.Msg.GetTotalSize() == 300 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err, _ := wt.stop(rw); err != nil {
		t.Fatalf("Run returned %v", err)
	}
	var left string
	for range 40 {
		if left = workerGoroutines(); left == "" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("worker goroutines left after Run returned:\n%s", left)
}

// workerGoroutines is the stacks of the goroutines running the worker's code.
func workerGoroutines() string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "taskstream.(*runState)") || strings.Contains(g, "taskstream.(*Worker)") || strings.Contains(g, "taskstream.callHandler") {
			found = append(found, g)
		}
	}
	return strings.Join(found, "\n\n")
}
