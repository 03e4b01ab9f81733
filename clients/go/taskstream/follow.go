package taskstream

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/protobuf/proto"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
	"taskstream.dev/clients/go/gen/taskstream/v1/taskstreamv1connect"
)

// A Follower reads StreamTasks and, after a disconnect, calls again from the
// last sequence it handled, following README's rules for resuming:
//
//   - Its cursor is the sequence of the last event, snapshot_complete or
//     heartbeat the handler returned nil for. The snapshot's events (running
//     tasks, sent before snapshot_complete) do not move it.
//   - After an error Retry accepts, it waits (backoff with jitter) and calls
//     again with after_sequence = cursor: the server replays every matching
//     event after it, then goes live, with no gap and no repeat.
//   - Without a cursor yet (the stream broke before snapshot_complete), it
//     calls again as the first time, and the snapshot starts over.
//   - A cursor older than the log still holds (FAILED_PRECONDITION,
//     CURSOR_EXPIRED) cannot be resumed: it drops the cursor and takes a
//     fresh snapshot (or, with skip_snapshot, goes live from the log's end).
//
// Both times it starts over after handling something, the handler first gets
// a Message with Restart set. Run is not for concurrent use; Cursor may be
// called from any goroutine while it runs.
type Follower struct {
	Tasks taskstreamv1connect.TaskServiceClient
	// Request is what to stream: filter, skip_snapshot, heartbeat_interval,
	// and after_sequence to start from a cursor. Run does not modify it.
	Request *taskstreamv1.StreamTasksRequest
	// Retry says whether to resume after err. Nil means Retryable.
	Retry func(err error) bool
	// MinBackoff and MaxBackoff bound the wait before resuming, which doubles
	// after each failed call and starts over once a call delivers a message.
	// Zero means 100 ms and 5 s.
	MinBackoff, MaxBackoff time.Duration
	// OnRetry, when set, is told each error Run resumes after, and the wait.
	OnRetry func(err error, wait time.Duration)

	once      sync.Once
	mu        sync.Mutex // guards cursor and hasCursor, which Cursor reads
	cursor    int64
	hasCursor bool
}

// Message is one message of the stream, or the Follower's notice that it
// starts over.
type Message struct {
	// The server's message (Event, SnapshotComplete or Heartbeat); nil when
	// Restart is set. Its getters are nil-safe.
	*taskstreamv1.StreamTasksResponse
	// Snapshot marks an event of the snapshot: a task running as of the
	// snapshot's sequence, not a change. Snapshot events come in no
	// particular sequence order; snapshot_complete ends them.
	Snapshot bool
	// Restart, when set, says why the Follower starts over without a cursor:
	// a snapshot that broke before snapshot_complete, or CURSOR_EXPIRED.
	// A fresh snapshot follows (unless the request skips it): whatever was
	// built from the earlier snapshot, or from events since, is stale.
	Restart error
}

// Cursor is the sequence to resume after, and whether there is one yet.
func (f *Follower) Cursor() (int64, bool) {
	f.init()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cursor, f.hasCursor
}

func (f *Follower) init() {
	f.once.Do(func() {
		if f.Request.AfterSequence != nil {
			f.setCursor(f.Request.GetAfterSequence(), true)
		}
	})
}

func (f *Follower) setCursor(sequence int64, ok bool) {
	f.mu.Lock()
	f.cursor, f.hasCursor = sequence, ok
	f.mu.Unlock()
}

// Run streams until ctx ends (it returns ctx's error), the handler returns an
// error (it returns that), or a call fails with an error Retry refuses (it
// returns that; the cursor stays valid for a later Run).
func (f *Follower) Run(ctx context.Context, handle func(*Message) error) error {
	f.init()
	retry := f.Retry
	if retry == nil {
		retry = Retryable
	}
	minWait, maxWait := f.MinBackoff, f.MaxBackoff
	if minWait <= 0 {
		minWait = 100 * time.Millisecond
	}
	if maxWait < minWait {
		maxWait = max(minWait, 5*time.Second)
	}
	wait := minWait
	for {
		delivered, handlerErr, err := f.call(ctx, handle)
		if handlerErr != nil {
			return handlerErr
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if delivered {
			wait = minWait
		}
		if err == nil {
			// The server ended the call without an error, which it does not
			// do unprompted: resume like after any disconnect.
			err = connect.NewError(connect.CodeUnavailable, errors.New("StreamTasks ended"))
		}
		_, hasCursor := f.Cursor()
		if reason, _ := ErrorReason(err); reason == "CURSOR_EXPIRED" && hasCursor {
			f.setCursor(0, false)
			if err := handle(&Message{Restart: err}); err != nil {
				return err
			}
			continue
		}
		if !retry(err) {
			return err
		}
		if !hasCursor && delivered {
			// The snapshot broke off: the next call sends it again from the start.
			if err := handle(&Message{Restart: err}); err != nil {
				return err
			}
		}
		sleep := jitter(wait)
		if f.OnRetry != nil {
			f.OnRetry(err, sleep)
		}
		timer := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
		wait = min(2*wait, maxWait)
	}
}

// call makes one StreamTasks call and hands its messages to handle, moving the
// cursor; it says whether any message was handled.
func (f *Follower) call(ctx context.Context, handle func(*Message) error) (delivered bool, handlerErr, err error) {
	cursor, hasCursor := f.Cursor()
	req := proto.CloneOf(f.Request)
	req.AfterSequence = nil
	if hasCursor {
		req.AfterSequence = proto.Int64(cursor)
	}
	// With a cursor no snapshot is sent; without one, every event before
	// snapshot_complete is the snapshot's.
	inSnapshot := !hasCursor
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := f.Tasks.StreamTasks(ctx, connect.NewRequest(req))
	if err != nil {
		return false, nil, err
	}
	defer stream.Close()
	for stream.Receive() {
		res := stream.Msg()
		var sequence int64
		var moves bool
		switch m := res.Message.(type) {
		case *taskstreamv1.StreamTasksResponse_Event:
			sequence, moves = m.Event.GetSequence(), !inSnapshot
		case *taskstreamv1.StreamTasksResponse_SnapshotComplete:
			sequence, moves = m.SnapshotComplete.GetSequence(), true
		case *taskstreamv1.StreamTasksResponse_Heartbeat:
			sequence, moves = m.Heartbeat.GetSequence(), !inSnapshot
		}
		if err := handle(&Message{StreamTasksResponse: res, Snapshot: inSnapshot && res.GetEvent() != nil}); err != nil {
			return true, err, nil
		}
		delivered = true
		if _, ok := res.Message.(*taskstreamv1.StreamTasksResponse_SnapshotComplete); ok {
			inSnapshot = false
		}
		if moves && (!hasCursor || sequence > cursor) {
			cursor, hasCursor = sequence, true
			f.setCursor(cursor, true)
		}
	}
	return delivered, nil, stream.Err()
}

// Retryable says whether a StreamTasks call that failed with err is worth
// making again from the cursor: UNAVAILABLE (server shutdown, storage out of
// reach, a lost connection), the codes a broken connection or stream shows as
// (UNKNOWN, INTERNAL, ABORTED, and CANCELED: connect-go reports a connection
// reset by the peer as CANCELED), and DEADLINE_EXCEEDED (a deadline of the
// call). Run checks its own context first: once that is done, it returns.
func Retryable(err error) bool {
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal, connect.CodeAborted, connect.CodeCanceled, connect.CodeDeadlineExceeded:
		return true
	}
	return false
}

// ErrorInfo is the google.rpc.ErrorInfo detail of a taskstream error, if it
// has one.
func ErrorInfo(err error) *errdetails.ErrorInfo {
	var connectErr *connect.Error
	if !errors.As(err, &connectErr) {
		return nil
	}
	for _, detail := range connectErr.Details() {
		if detail.Type() != "google.rpc.ErrorInfo" {
			continue
		}
		info := new(errdetails.ErrorInfo)
		if proto.Unmarshal(detail.Bytes(), info) == nil {
			return info
		}
	}
	return nil
}

// ErrorReason is the reason of a taskstream error's ErrorInfo
// ("CURSOR_EXPIRED", "LEASE_MISMATCH", ...) and its metadata, or "".
func ErrorReason(err error) (string, map[string]string) {
	info := ErrorInfo(err)
	return info.GetReason(), info.GetMetadata()
}

// OldestSequence is the oldest cursor the server still holds, from a
// CURSOR_EXPIRED error's metadata.
func OldestSequence(err error) (int64, bool) {
	reason, metadata := ErrorReason(err)
	if reason != "CURSOR_EXPIRED" {
		return 0, false
	}
	n, parseErr := strconv.ParseInt(metadata["oldest_sequence"], 10, 64)
	return n, parseErr == nil
}
