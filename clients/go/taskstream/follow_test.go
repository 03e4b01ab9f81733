package taskstream_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
	"taskstream.dev/clients/go/taskstream"
)

// seen is what the test's handler got, one line per message.
type seen struct {
	kind     string // "event", "snapshot-event", "snapshot_complete", "heartbeat", "restart"
	sequence int64
	task     string
	change   string // the event's kind: queued, running, ...
}

func kindOf(e *taskstreamv1.TaskEvent) string {
	switch e.GetKind().(type) {
	case *taskstreamv1.TaskEvent_Queued:
		return "queued"
	case *taskstreamv1.TaskEvent_Running:
		return "running"
	case *taskstreamv1.TaskEvent_Output:
		return "output"
	case *taskstreamv1.TaskEvent_Completed:
		return "completed"
	case *taskstreamv1.TaskEvent_Failed:
		return "failed"
	case *taskstreamv1.TaskEvent_Cancelled:
		return "cancelled"
	case *taskstreamv1.TaskEvent_Suspended:
		return "suspended"
	case *taskstreamv1.TaskEvent_Resumed:
		return "resumed"
	}
	return "?"
}

// TestFollowerResumes follows one agent's tasks through the Go client, cuts
// the follower's connection while more is written, and checks that it resumes
// from its cursor: every event once, in sequence order, none of another agent's.
func TestFollowerResumes(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	direct := taskstream.NewClient(srv.URL)
	defer direct.Close()
	px := startProxy(t, srv.Addr)
	viaProxy := taskstream.NewClient("http://" + px.Addr)
	defer viaProxy.Close()

	const agent = "go-follower"
	dispatch := func(name string, claim bool, agentID string) (*taskstreamv1.Task, *taskstreamv1.Lease) {
		t.Helper()
		req := &taskstreamv1.DispatchTaskRequest{ToolName: "go-tool", ToolCallId: name, AgentId: agentID, Args: &structpb.Struct{Fields: map[string]*structpb.Value{"n": structpb.NewStringValue(name)}}}
		if claim {
			req.Claim = &taskstreamv1.ClaimOptions{WorkerId: "go-worker"}
		}
		res, err := direct.Tasks.DispatchTask(ctx, connect.NewRequest(req))
		if err != nil {
			t.Fatalf("DispatchTask %s: %v", name, err)
		}
		return res.Msg.GetTask(), res.Msg.GetLease()
	}
	complete := func(task *taskstreamv1.Task, lease *taskstreamv1.Lease) {
		t.Helper()
		_, err := direct.Workers.CompleteTask(ctx, connect.NewRequest(&taskstreamv1.CompleteTaskRequest{TaskId: task.GetTaskId(), LeaseId: lease.GetLeaseId(), Result: structpb.NewStringValue("done")}))
		if err != nil {
			t.Fatalf("CompleteTask: %v", err)
		}
	}

	// Before the stream: one pending task (not in the snapshot) and one running (in it).
	dispatch("pending-before", false, agent)
	runningBefore, runningLease := dispatch("running-before", true, agent)

	messages := make(chan seen, 1000)
	retries := make(chan error, 100)
	follower := &taskstream.Follower{
		Tasks:      viaProxy.Tasks,
		Request:    &taskstreamv1.StreamTasksRequest{Filter: &taskstreamv1.TaskFilter{AgentId: agent}, HeartbeatInterval: durationpb.New(200 * time.Millisecond)},
		MinBackoff: 50 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
		OnRetry:    func(err error, _ time.Duration) { retries <- err },
	}
	followCtx, stopFollowing := context.WithCancel(ctx)
	ended := make(chan error, 1)
	go func() {
		ended <- follower.Run(followCtx, func(m *taskstream.Message) error {
			switch {
			case m.Restart != nil:
				messages <- seen{kind: "restart"}
			case m.GetEvent() != nil:
				kind := "event"
				if m.Snapshot {
					kind = "snapshot-event"
				}
				e := m.GetEvent()
				messages <- seen{kind: kind, sequence: e.GetSequence(), task: e.GetToolCallId(), change: kindOf(e)}
			case m.GetSnapshotComplete() != nil:
				messages <- seen{kind: "snapshot_complete", sequence: m.GetSnapshotComplete().GetSequence()}
			case m.GetHeartbeat() != nil:
				messages <- seen{kind: "heartbeat", sequence: m.GetHeartbeat().GetSequence()}
			}
			return nil
		})
	}()

	// Events in arrival order, heartbeats checked and left out.
	var events []seen
	var last int64
	live := false
	next := func() seen {
		t.Helper()
		for {
			select {
			case m := <-messages:
				switch m.kind {
				case "restart":
					t.Fatalf("the follower started over: %+v", m)
				case "heartbeat":
					if m.sequence < last {
						t.Fatalf("heartbeat at %d after sequence %d", m.sequence, last)
					}
					continue
				case "event":
					if !live {
						t.Fatalf("live event before snapshot_complete: %+v", m)
					}
					if m.sequence <= last {
						t.Fatalf("event %d after %d: out of order or repeated", m.sequence, last)
					}
					last = m.sequence
					events = append(events, m)
				case "snapshot_complete":
					live, last = true, m.sequence
				}
				return m
			case err := <-ended:
				t.Fatalf("Run ended: %v", err)
			case <-ctx.Done():
				t.Fatalf("timed out; events so far: %+v", events)
			}
		}
	}
	expect := func(want ...string) {
		t.Helper()
		for _, w := range want {
			m := next()
			if got := fmt.Sprintf("%s %s", m.task, m.change); got != w {
				t.Fatalf("got %q (%s %d), want %q", got, m.kind, m.sequence, w)
			}
		}
	}

	// The snapshot: the running task, then snapshot_complete.
	if m := next(); m.kind != "snapshot-event" || m.task != "running-before" || m.change != "running" {
		t.Fatalf("first message %+v, want the running task's snapshot event", m)
	}
	if m := next(); m.kind != "snapshot_complete" {
		t.Fatalf("second message %+v, want snapshot_complete", m)
	}

	// Live: another agent's task is filtered out.
	dispatch("other-agent", true, "someone-else")
	task, lease := dispatch("live-1", true, agent)
	if _, err := direct.Workers.ReportOutput(ctx, connect.NewRequest(&taskstreamv1.ReportOutputRequest{TaskId: task.GetTaskId(), LeaseId: lease.GetLeaseId(), Output: structpb.NewStringValue("half way")})); err != nil {
		t.Fatalf("ReportOutput: %v", err)
	}
	complete(task, lease)
	expect("live-1 queued", "live-1 running", "live-1 output", "live-1 completed")
	cursor, ok := follower.Cursor()
	if !ok || cursor != last {
		t.Fatalf("cursor %d (%v), want %d", cursor, ok, last)
	}

	// Cut the follower's connection; write while it is away.
	px.setDown(true)
	select {
	case err := <-retries:
		if !taskstream.Retryable(err) {
			t.Fatalf("retried after an error Retryable refuses: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the follower did not notice its connection was cut")
	}
	away, awayLease := dispatch("while-away", true, agent)
	complete(runningBefore, runningLease)
	complete(away, awayLease)
	px.setDown(false)
	expect("while-away queued", "while-away running", "running-before completed", "while-away completed")

	// Live again after the resume.
	dispatch("after-resume", false, agent)
	expect("after-resume queued")

	stopFollowing()
	if err := <-ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}

// TestFollowerCursorAhead: a cursor past the log's end is not retried.
func TestFollowerCursorAhead(t *testing.T) {
	srv := startServer(t)
	client := taskstream.NewClient(srv.URL)
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ahead := int64(1_000_000)
	follower := &taskstream.Follower{Tasks: client.Tasks, Request: &taskstreamv1.StreamTasksRequest{AfterSequence: &ahead}}
	err := follower.Run(ctx, func(*taskstream.Message) error { return nil })
	if connect.CodeOf(err) != connect.CodeOutOfRange {
		t.Fatalf("Run returned %v, want OUT_OF_RANGE", err)
	}
	if reason, _ := taskstream.ErrorReason(err); reason != "CURSOR_AHEAD" {
		t.Fatalf("reason %q, want CURSOR_AHEAD", reason)
	}
}
