package taskstream

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	taskstreamv1 "taskstream.dev/clients/go/gen/taskstream/v1"
)

// A Handler runs one claimed task. Its ctx is cancelled when the task's
// cancel is requested (or it timed out), its lease is lost, or the worker
// stops past its grace; context.Cause(ctx) and job.CancelReason say which.
//
// It returns the task's result: any JSON value (converted with
// structpb.NewValue, or through encoding/json when that fails), or a
// *structpb.Value as is. An error fails the task: a *Failure sets the
// TaskError's fields, any other error is retryable. Return Suspend(payload)
// to suspend the task until a producer resumes it. A panic counts as an error.
type Handler func(ctx context.Context, job *Job) (any, error)

// Why a handler's ctx was cancelled: its context.Cause.
var (
	// The producer called CancelTask, or the task ran past its timeout.
	ErrCancelRequested = errors.New("cancel requested")
	// The server refused the lease: another worker may hold the task now,
	// and nothing is reported for it.
	ErrLeaseLost = errors.New("lease lost")
	// The worker stopped and the handler ran past the shutdown grace; the
	// task is failed retryable so another worker gets it at once.
	ErrWorkerStopping = errors.New("worker stopping")
)

const (
	defaultConcurrency   = 10
	defaultClaimWait     = 20 * time.Second
	defaultShutdownGrace = 30 * time.Second
	// The server's cap on one ClaimTasks batch.
	maxClaimBatch = 100
	// A claim's deadline is its wait plus this, so a dead connection cannot
	// hold the loop, while the server (which answers before the deadline)
	// never sees a wait cut short.
	claimDeadlineMargin = 10 * time.Second
	minClaimBackoff     = 100 * time.Millisecond
	maxClaimBackoff     = 5 * time.Second
	minHeartbeatEvery   = 100 * time.Millisecond
	settleAttempts      = 4
	settleCallTimeout   = 10 * time.Second
)

// A Worker claims tasks of its tools, runs their handlers concurrently,
// heartbeats their leases and reports how each ended, until Run's ctx ends.
type Worker struct {
	client        *Client
	id            string
	handlers      map[string]Handler
	toolNames     []string
	concurrency   int
	claimWait     time.Duration
	leaseDuration time.Duration
	shutdownGrace time.Duration
	logger        *slog.Logger
}

// A WorkerOption changes a default of NewWorker.
type WorkerOption func(*Worker)

// WithConcurrency sets how many handlers may run at once (default 10).
func WithConcurrency(n int) WorkerOption { return func(w *Worker) { w.concurrency = n } }

// WithClaimWait sets how long a ClaimTasks call waits for a task (default
// 20 s; the server caps it).
func WithClaimWait(d time.Duration) WorkerOption { return func(w *Worker) { w.claimWait = d } }

// WithLeaseDuration sets the lease asked for on ClaimTasks and Heartbeat
// (default: the server's, 30 s unless configured).
func WithLeaseDuration(d time.Duration) WorkerOption {
	return func(w *Worker) { w.leaseDuration = d }
}

// WithShutdownGrace sets how long running handlers may finish once Run's ctx
// ends (default 30 s); 0 cancels them at once.
func WithShutdownGrace(d time.Duration) WorkerOption {
	return func(w *Worker) { w.shutdownGrace = d }
}

// WithLogger logs what the worker drops or retries (none by default).
func WithLogger(logger *slog.Logger) WorkerOption { return func(w *Worker) { w.logger = logger } }

// NewWorker returns a worker that runs tasks whose tool names are the keys of
// handlers, as workerID.
func NewWorker(client *Client, workerID string, handlers map[string]Handler, opts ...WorkerOption) (*Worker, error) {
	w := &Worker{
		client:        client,
		id:            workerID,
		handlers:      make(map[string]Handler, len(handlers)),
		concurrency:   defaultConcurrency,
		claimWait:     defaultClaimWait,
		shutdownGrace: defaultShutdownGrace,
		logger:        slog.New(slog.DiscardHandler),
	}
	for name, handler := range handlers {
		w.handlers[name] = handler
		w.toolNames = append(w.toolNames, name)
	}
	slices.Sort(w.toolNames)
	for _, opt := range opts {
		opt(w)
	}
	if err := w.validate(); err != nil {
		return nil, err
	}
	w.logger = w.logger.With("worker_id", w.id)
	return w, nil
}

func (w *Worker) validate() error {
	switch {
	case w.client == nil:
		return errors.New("taskstream: NewWorker needs a client")
	case w.id == "":
		return errors.New("taskstream: NewWorker needs a worker id")
	case len(w.handlers) == 0:
		return errors.New("taskstream: NewWorker needs at least one handler")
	case w.concurrency < 1:
		return fmt.Errorf("taskstream: concurrency %d, want at least 1", w.concurrency)
	case w.claimWait <= 0:
		return fmt.Errorf("taskstream: claim wait %v, want more than 0", w.claimWait)
	case w.leaseDuration < 0 || w.shutdownGrace < 0:
		return errors.New("taskstream: lease duration and shutdown grace must not be negative")
	case w.logger == nil:
		return errors.New("taskstream: nil logger")
	}
	for name, handler := range w.handlers {
		if name == "" || handler == nil {
			return fmt.Errorf("taskstream: handler %q: empty tool name or nil handler", name)
		}
	}
	return nil
}

// Run claims and runs tasks until ctx ends, then stops claiming at once, lets
// running handlers finish for the shutdown grace, cancels the rest
// (ErrWorkerStopping) and fails them retryable, and returns nil. A claim
// error other than a transient one ends Run the same way, and Run returns it.
// Handlers' contexts carry ctx's values, not its cancellation. Run is not for
// concurrent use.
func (w *Worker) Run(ctx context.Context) error {
	r := &runState{
		worker:   w,
		slots:    make(chan struct{}, w.concurrency),
		jobs:     map[*Job]struct{}{},
		detached: context.WithoutCancel(ctx),
	}
	err := r.claimLoop(ctx)
	r.shutdown()
	return err
}

// runState is one Run's: its slots (one token per running handler) and jobs.
type runState struct {
	worker *Worker
	slots  chan struct{}
	// detached is Run's ctx without its cancellation: handlers, heartbeats
	// and settle calls go on past the stop.
	detached context.Context

	mu      sync.Mutex
	jobs    map[*Job]struct{} // claimed and not yet settled
	settled sync.WaitGroup    // one per job in jobs
}

func (r *runState) claimLoop(ctx context.Context) error {
	backoff := minClaimBackoff
	for {
		free, ok := r.acquireSlots(ctx)
		if !ok {
			return nil
		}
		claimed, err := r.claim(ctx, free)
		r.releaseSlots(free - len(claimed))
		if ctx.Err() != nil && len(claimed) == 0 {
			return nil
		}
		if err != nil {
			if !transient(err) {
				return err
			}
			r.worker.logger.Warn("taskstream worker: ClaimTasks failed, retrying", "error", err)
			if !sleep(ctx, jitter(backoff)) {
				return nil
			}
			backoff = min(2*backoff, maxClaimBackoff)
			continue
		}
		backoff = minClaimBackoff
		for _, c := range claimed {
			r.start(c)
		}
	}
}

// acquireSlots waits for one free slot, then takes every other free one, up
// to a claim batch.
func (r *runState) acquireSlots(ctx context.Context) (int, bool) {
	select {
	case <-ctx.Done():
		return 0, false
	case r.slots <- struct{}{}:
	}
	n := 1
	for n < maxClaimBatch {
		select {
		case r.slots <- struct{}{}:
			n++
		default:
			return n, true
		}
	}
	return n, true
}

func (r *runState) releaseSlots(n int) {
	for range n {
		<-r.slots
	}
}

func (r *runState) claim(ctx context.Context, maxTasks int) ([]*taskstreamv1.ClaimedTask, error) {
	w := r.worker
	ctx, cancel := context.WithTimeout(ctx, w.claimWait+claimDeadlineMargin)
	defer cancel()
	res, err := w.client.Workers.ClaimTasks(ctx, connect.NewRequest(&taskstreamv1.ClaimTasksRequest{
		WorkerId:      w.id,
		ToolNames:     w.toolNames,
		MaxTasks:      int32(maxTasks),
		Wait:          durationpb.New(w.claimWait),
		LeaseDuration: w.leaseDurationProto(),
	}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetTasks(), nil
}

func (w *Worker) leaseDurationProto() *durationpb.Duration {
	if w.leaseDuration == 0 {
		return nil
	}
	return durationpb.New(w.leaseDuration)
}

// start runs a claimed task's handler and heartbeats in their own goroutines;
// the task holds one of the slots claimLoop took.
func (r *runState) start(claimed *taskstreamv1.ClaimedTask) {
	job := newJob(r.detached, r.worker, claimed)
	r.mu.Lock()
	r.jobs[job] = struct{}{}
	r.settled.Add(1)
	r.mu.Unlock()
	go r.worker.keepLease(job)
	go r.runJob(job)
}

func (r *runState) runJob(job *Job) {
	var value any
	err := errHandlerExited // unless the handler returns
	// Deferred, so that it runs when the handler ends its goroutine with
	// runtime.Goexit (t.FailNow does) instead of returning.
	defer func() {
		job.cancel(nil) // as for an HTTP request's ctx: what the handler started ends with it
		r.releaseSlots(1)
		if job.take() {
			defer r.finish(job)
			r.worker.settle(r.detached, job, value, err)
		}
	}()
	value, err = callHandler(r.worker.handlers[job.Task.GetToolName()], job)
}

// errHandlerExited fails the task of a handler that called runtime.Goexit.
var errHandlerExited = errors.New("taskstream: the handler ended its goroutine (runtime.Goexit) without returning")

// callHandler runs the handler, turning a panic into an error.
func callHandler(handler Handler, job *Job) (value any, err error) {
	if handler == nil {
		return nil, &Failure{Message: "no handler for tool " + job.Task.GetToolName(), Code: "NO_HANDLER"}
	}
	defer func() {
		if p := recover(); p != nil {
			err = &panicError{value: p, stack: string(debug.Stack())}
		}
	}()
	return handler(job.ctx, job)
}

func (r *runState) finish(job *Job) {
	r.mu.Lock()
	delete(r.jobs, job)
	r.mu.Unlock()
	r.settled.Done()
}

// shutdown waits up to the grace for the jobs to settle, then takes over the
// ones whose handlers still run and waits for every report.
func (r *runState) shutdown() {
	done := make(chan struct{})
	go func() { r.settled.Wait(); close(done) }()
	grace := time.NewTimer(r.worker.shutdownGrace)
	defer grace.Stop()
	select {
	case <-done:
		return
	case <-grace.C:
	}
	r.mu.Lock()
	for job := range r.jobs {
		if job.take() {
			go r.abandon(job)
		}
	}
	r.mu.Unlock()
	<-done
}

// abandon cancels a handler that outlived the grace and fails its task
// retryable, without waiting for the handler, which may ignore its ctx.
func (r *runState) abandon(job *Job) {
	defer r.finish(job)
	job.cancel(ErrWorkerStopping)
	job.stopHeartbeats()
	if job.leaseLost.Load() {
		return
	}
	w := r.worker
	failure := &taskstreamv1.TaskError{Message: ErrWorkerStopping.Error(), Retryable: true}
	w.report(r.detached, job, "FailTask", w.failCall(job, failure))
}

// A Job is a claimed task, handed to its handler. The handler's ctx ends
// when it returns.
type Job struct {
	Task *taskstreamv1.Task
	// The lease as claimed; the worker renews it with heartbeats.
	Lease *taskstreamv1.Lease

	worker         *Worker
	ctx            context.Context // the handler's
	cancel         context.CancelCauseFunc
	heartbeatCtx   context.Context
	stopHeartbeats context.CancelFunc
	leaseLost      atomic.Bool
	// ttl is the lease's length as measured at the claim: its expire_time
	// less the local time then.
	ttl time.Duration

	mu      sync.Mutex
	renewed time.Time // when the last claim or heartbeat that renewed the lease was sent
	taken   bool      // whoever reports the job's end has taken it
}

func newJob(parent context.Context, w *Worker, claimed *taskstreamv1.ClaimedTask) *Job {
	now := time.Now()
	job := &Job{Task: claimed.GetTask(), Lease: claimed.GetLease(), worker: w, renewed: now}
	job.ttl = claimed.GetLease().GetExpireTime().AsTime().Sub(now)
	job.ctx, job.cancel = context.WithCancelCause(parent)
	job.heartbeatCtx, job.stopHeartbeats = context.WithCancel(parent)
	return job
}

// ReportOutput appends value (a JSON value, as a handler's result) to the
// task's output events. When the server refuses the lease, the job's ctx is
// cancelled (ErrLeaseLost) and nothing more is reported for it.
func (j *Job) ReportOutput(ctx context.Context, value any) error {
	output, err := toValue(value)
	if err != nil {
		return fmt.Errorf("taskstream: output is not a JSON value: %w", err)
	}
	_, err = j.worker.client.Workers.ReportOutput(ctx, connect.NewRequest(&taskstreamv1.ReportOutputRequest{
		TaskId: j.Task.GetTaskId(), LeaseId: j.Lease.GetLeaseId(), Output: output,
	}))
	if leaseRefused(err) {
		j.loseLease()
	}
	return err
}

// CancelReason is why the handler's ctx was cancelled ("cancel requested",
// "lease lost", "worker stopping"), or "" while it is not.
func (j *Job) CancelReason() string {
	if j.ctx.Err() == nil {
		return ""
	}
	return context.Cause(j.ctx).Error()
}

func (j *Job) loseLease() {
	j.leaseLost.Store(true)
	j.cancel(ErrLeaseLost)
}

// take says whether the caller is the one to report the job's end: the
// handler's goroutine when it returns, or shutdown past the grace.
func (j *Job) take() bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.taken {
		return false
	}
	j.taken = true
	return true
}

// leaseLeft is how long the lease has at least, as far as the worker knows.
func (j *Job) leaseLeft() time.Duration {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.ttl - time.Since(j.renewed)
}

func (j *Job) renewedAt(t time.Time) {
	j.mu.Lock()
	j.renewed = t
	j.mu.Unlock()
}

// keepLease heartbeats every third of the lease until the job's end.
func (w *Worker) keepLease(job *Job) {
	ticker := time.NewTicker(max(job.ttl/3, minHeartbeatEvery))
	defer ticker.Stop()
	for {
		select {
		case <-job.heartbeatCtx.Done():
			return
		case <-ticker.C:
		}
		if !w.heartbeat(job) {
			return
		}
	}
}

// heartbeat renews the lease once; it says whether to go on. An error other
// than a refusal keeps the schedule: the lease may still be good.
func (w *Worker) heartbeat(job *Job) bool {
	sent := time.Now()
	ctx, cancel := context.WithTimeout(job.heartbeatCtx, max(job.ttl, time.Second))
	defer cancel()
	res, err := w.client.Workers.Heartbeat(ctx, connect.NewRequest(&taskstreamv1.HeartbeatRequest{
		TaskId: job.Task.GetTaskId(), LeaseId: job.Lease.GetLeaseId(), LeaseDuration: w.leaseDurationProto(),
	}))
	switch {
	case leaseRefused(err):
		job.loseLease()
		return false
	case err != nil:
		if job.heartbeatCtx.Err() == nil {
			w.logger.Warn("taskstream worker: Heartbeat failed", "task_id", job.Task.GetTaskId(), "error", err)
		}
		return true
	}
	job.renewedAt(sent)
	if res.Msg.GetCancelRequested() {
		// Heartbeats go on: the lease must outlive the handler's FailTask.
		job.cancel(ErrCancelRequested)
	}
	return true
}

// settle reports how the handler ended, unless the lease was lost. A result
// or payload the server refuses as invalid fails the task instead, so it does
// not hang until its lease expires.
func (w *Worker) settle(ctx context.Context, job *Job, value any, handlerErr error) {
	job.stopHeartbeats()
	if job.leaseLost.Load() {
		w.logger.Info("taskstream worker: lease lost, nothing reported", "task_id", job.Task.GetTaskId())
		return
	}
	name, call, failure := w.settlement(job, value, handlerErr)
	err := w.report(ctx, job, name, call)
	if contentRefused(err) {
		// Each retry would end the same way: fail the task saying why, once,
		// rather than leave it to its lease.
		w.report(ctx, job, "FailTask", w.failCall(job, refusal(name, failure, err)))
	}
}

// contentRefused says whether the server refused a settle call for what it
// carries: invalid (too deep, too large to store) or larger than a message
// may be (RESOURCE_EXHAUSTED, which a settle call gets for nothing else).
func contentRefused(err error) bool {
	code := connect.CodeOf(err)
	return err != nil && (code == connect.CodeInvalidArgument || code == connect.CodeResourceExhausted)
}

// refusedErrorExcerpt is how much of a handler's error a FailTask refused
// for its size still carries.
const refusedErrorExcerpt = 1000

// refusal is the failure that stands for a settle call refused for its
// content: why, and the start of the handler's error (failure) if it was one.
func refusal(call string, failure *taskstreamv1.TaskError, err error) *taskstreamv1.TaskError {
	reason, _ := ErrorReason(err)
	code := cmp.Or(reason, strings.ToUpper(connect.CodeOf(err).String()))
	message := call + " refused: " + errorMessage(err)
	if failure == nil {
		return &taskstreamv1.TaskError{Message: message, Code: code}
	}
	excerpt := failure.GetMessage()
	if len(excerpt) > refusedErrorExcerpt {
		excerpt = strings.ToValidUTF8(excerpt[:refusedErrorExcerpt], "") + "…"
	}
	return &taskstreamv1.TaskError{Message: message + "; the error was: " + excerpt, Code: code, Retryable: failure.GetRetryable()}
}

// errorMessage is a connect error's message without its code.
func errorMessage(err error) string {
	var connectErr *connect.Error
	if errors.As(err, &connectErr) {
		return connectErr.Message()
	}
	return err.Error()
}

// settlement is the call that reports the handler's end: CompleteTask,
// SuspendTask or FailTask, with the TaskError it sends if it is FailTask.
func (w *Worker) settlement(job *Job, value any, handlerErr error) (string, func(context.Context) error, *taskstreamv1.TaskError) {
	taskID, leaseID := job.Task.GetTaskId(), job.Lease.GetLeaseId()
	fail := func(taskErr *taskstreamv1.TaskError) (string, func(context.Context) error, *taskstreamv1.TaskError) {
		return "FailTask", w.failCall(job, taskErr), taskErr
	}
	var suspend *suspendError
	if errors.As(handlerErr, &suspend) {
		payload, err := toValue(suspend.payload)
		if err != nil {
			return fail((&Failure{Message: "suspend payload is not a JSON value: " + err.Error(), Code: "INVALID_SUSPEND_PAYLOAD"}).taskError())
		}
		return "SuspendTask", func(ctx context.Context) error {
			_, err := w.client.Workers.SuspendTask(ctx, connect.NewRequest(&taskstreamv1.SuspendTaskRequest{TaskId: taskID, LeaseId: leaseID, Payload: payload}))
			return err
		}, nil
	}
	if handlerErr != nil {
		return fail(taskErrorOf(handlerErr))
	}
	result, err := toValue(value)
	if err != nil {
		return fail((&Failure{Message: "result is not a JSON value: " + err.Error(), Code: "INVALID_RESULT"}).taskError())
	}
	return "CompleteTask", func(ctx context.Context) error {
		_, err := w.client.Workers.CompleteTask(ctx, connect.NewRequest(&taskstreamv1.CompleteTaskRequest{TaskId: taskID, LeaseId: leaseID, Result: result}))
		return err
	}, nil
}

func (w *Worker) failCall(job *Job, taskErr *taskstreamv1.TaskError) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := w.client.Workers.FailTask(ctx, connect.NewRequest(&taskstreamv1.FailTaskRequest{
			TaskId: job.Task.GetTaskId(), LeaseId: job.Lease.GetLeaseId(), Error: taskErr,
		}))
		return err
	}
}

// report makes a settle call, retrying transient errors while the lease may
// still be valid, and logs how it ended. A refusal (the task was cancelled,
// timed out or re-leased meanwhile) is dropped.
func (w *Worker) report(ctx context.Context, job *Job, name string, call func(context.Context) error) error {
	backoff := minClaimBackoff
	var err error
	for attempt := 1; ; attempt++ {
		callCtx, cancel := context.WithTimeout(ctx, settleCallTimeout)
		err = call(callCtx)
		cancel()
		// Not RESOURCE_EXHAUSTED: a settle call gets it only for a message over the server's limit.
		if err == nil || !Retryable(err) || attempt == settleAttempts || job.leaseLeft() < backoff {
			break
		}
		time.Sleep(jitter(backoff))
		backoff *= 2
	}
	logger := w.logger.With("task_id", job.Task.GetTaskId(), "call", name)
	switch {
	case leaseRefused(err):
		logger.Info("taskstream worker: report refused, dropped", "error", err)
	case err != nil:
		logger.Error("taskstream worker: report failed", "error", err)
	}
	return err
}

// transient says whether a worker call that failed with err may succeed if
// made again: what Retryable says of a stream, and RESOURCE_EXHAUSTED (a
// server short of something now) (callers check their own ctx first).
func transient(err error) bool {
	return Retryable(err) || connect.CodeOf(err) == connect.CodeResourceExhausted
}

// leaseRefused says whether the server refused the call because the lease is
// no longer the task's (LEASE_MISMATCH, LEASE_EXPIRED, the task ended) or the
// task is gone.
func leaseRefused(err error) bool {
	code := connect.CodeOf(err)
	return err != nil && (code == connect.CodeFailedPrecondition || code == connect.CodeNotFound)
}

// jitter spreads a backoff over [d/2, d], so workers cut off together do not
// come back together.
func jitter(d time.Duration) time.Duration { return d/2 + rand.N(d/2+1) }

// sleep waits d; false when ctx ended first.
func sleep(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// toValue converts a Go value to a JSON value: a *structpb.Value as is, what
// structpb.NewValue takes, a message in its protojson form, or else what
// encoding/json makes of it (structs, typed slices and maps).
func toValue(v any) (*structpb.Value, error) {
	switch v := v.(type) {
	case *structpb.Value:
		return v, nil
	case proto.Message:
		return jsonToValue(protojson.Marshal(v))
	}
	if value, err := structpb.NewValue(v); err == nil {
		return value, nil
	}
	return jsonToValue(json.Marshal(v))
}

func jsonToValue(data []byte, err error) (*structpb.Value, error) {
	if err != nil {
		return nil, err
	}
	value := new(structpb.Value)
	return value, protojson.Unmarshal(data, value)
}

// A Failure returned by a handler fails its task with these TaskError fields.
// It is not retried unless Retryable is set.
type Failure struct {
	Message   string
	Code      string // machine-readable, such as "RATE_LIMITED"
	Retryable bool
	Details   map[string]any // a JSON object
}

func (f *Failure) Error() string {
	if f.Code == "" {
		return f.Message
	}
	return f.Code + ": " + f.Message
}

func (f *Failure) taskError() *taskstreamv1.TaskError {
	taskErr := &taskstreamv1.TaskError{Message: f.Message, Code: f.Code, Retryable: f.Retryable}
	if f.Details != nil {
		details, err := structpb.NewStruct(f.Details)
		if err != nil {
			// Keep the failure; say why its details are missing.
			details = &structpb.Struct{Fields: map[string]*structpb.Value{"invalid_details": structpb.NewStringValue(err.Error())}}
		}
		taskErr.Details = details
	}
	return taskErr
}

// taskErrorOf is the TaskError a handler's error reports: a *Failure's
// fields, a panic's stack, or a retryable failure with the error's message.
func taskErrorOf(err error) *taskstreamv1.TaskError {
	var failure *Failure
	if errors.As(err, &failure) {
		return failure.taskError()
	}
	taskErr := &taskstreamv1.TaskError{Message: err.Error(), Retryable: true}
	var p *panicError
	if errors.As(err, &p) {
		taskErr.Stack = p.stack
	}
	return taskErr
}

type panicError struct {
	value any
	stack string
}

func (p *panicError) Error() string { return fmt.Sprintf("panic: %v", p.value) }

// Suspend returns the error a handler returns to suspend its task with
// payload (a JSON value, as a result) until a producer calls ResumeTask; the
// handler then runs again and sees job.Task.ResumeData. It may be wrapped.
func Suspend(payload any) error { return &suspendError{payload: payload} }

type suspendError struct{ payload any }

func (s *suspendError) Error() string { return "taskstream: suspend the task" }
