"""A worker runner: claims tasks of the tools it has handlers for, runs each
handler on a thread pool, heartbeats while it runs, and settles the task
with what the handler returned (CompleteTask), raised (FailTask) or
suspended on (SuspendTask).

    def search(job: Job):
        job.report_output({"progress": 0.5})
        return {"hits": find(job.args["query"])}

    worker = Worker(client, "py-1", {"web-search": search})
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.run()  # until stop()
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2

from taskstream._retry import RETRYABLE, Backoff
from taskstream.v1 import task_pb2, worker_service_pb2

if TYPE_CHECKING:
    from taskstream import Client

__all__ = ["Worker", "Job", "Suspend", "Failure"]

log = logging.getLogger(__name__)

# ClaimTasks takes at most this many tasks per call.
_MAX_CLAIM = 100
# Every call but the claim's long-poll and the heartbeat gets this deadline.
_CALL_TIMEOUT = 10.0
_MIN_HEARTBEAT = 0.1
# A claim that comes back empty sooner than this (a zero or capped wait) is
# followed by a pause, so that the loop does not spin on the server.
_MIN_CLAIM_INTERVAL = 0.25
_SETTLE_ATTEMPTS = 5
# Worth claiming again after a pause: what a stream retries, and a server
# short of something now. Settle calls retry RETRYABLE only: they get
# RESOURCE_EXHAUSTED for nothing but a message over the server's limit.
_TRANSIENT = RETRYABLE | {grpc.StatusCode.RESOURCE_EXHAUSTED}
# A settle call refused for what it carries: invalid (too deep, too large to
# store) or larger than one message.
_CONTENT_REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
# How much of a handler's error a FailTask refused for its size still carries.
_REFUSED_ERROR_EXCERPT = 1000
# The lease is no longer the task's: it was cancelled, timed out, or leased again.
_LEASE_GONE = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND}


class Suspend(Exception):
    """Raised by a handler to suspend its task with ``payload`` (a JSON value)
    until a producer's ResumeTask; the handler then runs again and finds the
    producer's answer in ``job.resume_data``."""

    def __init__(self, payload: Any = None):
        super().__init__("suspend")
        self.payload = payload


class Failure(Exception):
    """Raised by a handler to fail its task with a code, details and a say on
    retrying. Any other exception fails the task as retryable."""

    def __init__(self, message: str, code: str = "", retryable: bool = False, details: Optional[Mapping[str, Any]] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.details = details


class Job:
    """One claimed task, as its handler sees it. ``cancelled`` is set (with
    ``cancel_reason``: "cancel requested", "lease lost" or "worker stopping")
    when the handler should stop; whatever it then returns or raises is
    reported as usual, except after a lost lease, when nothing is."""

    def __init__(self, workers, task: task_pb2.Task, lease: task_pb2.Lease):
        self.task = task
        self.lease = lease
        self.cancelled = threading.Event()
        self.cancel_reason: Optional[str] = None
        self._workers = workers
        self._lock = threading.Lock()
        self._lease_lost = False
        self._taken = False
        # Set once heartbeats are of no more use: the task is settled or
        # handed back, or its lease is lost.
        self._ended = threading.Event()
        lease_seconds = _lease_seconds_left(lease)
        self._heartbeat_interval = max(lease_seconds / 3, _MIN_HEARTBEAT)
        self._lease_deadline = time.monotonic() + lease_seconds

    @property
    def args(self) -> dict:
        """The task's arguments as a dict."""
        return json_format.MessageToDict(self.task.args)

    @property
    def resume_data(self) -> Any:
        """What ResumeTask gave the task, as a JSON value; None if nothing."""
        if not self.task.HasField("resume_data"):
            return None
        return json_format.MessageToDict(self.task.resume_data)

    def report_output(self, value: Any) -> int:
        """Appends a chunk of output (a JSON value) to the task's events and
        returns its sequence. Refused because the lease is gone, it cancels
        this job and raises the ``grpc.RpcError``."""
        request = worker_service_pb2.ReportOutputRequest(output=to_value(value), **self._ids())
        try:
            return self._workers.ReportOutput(request, timeout=_CALL_TIMEOUT).sequence
        except grpc.RpcError as error:
            if error.code() in _LEASE_GONE:
                self._lose_lease()
            raise

    def _ids(self) -> dict:
        return {"task_id": self.task.task_id, "lease_id": self.lease.lease_id}

    def _cancel(self, reason: str) -> None:
        with self._lock:
            if self.cancelled.is_set():
                return
            self.cancel_reason = reason
            self.cancelled.set()

    def _lose_lease(self) -> None:
        with self._lock:
            self._lease_lost = True
        self._ended.set()
        self._cancel("lease lost")

    def _renew(self, lease: task_pb2.Lease) -> None:
        with self._lock:
            self.lease = lease
            self._lease_deadline = time.monotonic() + _lease_seconds_left(lease)

    def _take(self) -> bool:
        """Claims the right to settle the task, once: the handler's return
        and the worker's shutdown race for it."""
        with self._lock:
            taken, self._taken = self._taken, True
        self._ended.set()
        return not taken

    @property
    def _reportable(self) -> bool:
        with self._lock:
            return not self._lease_lost


class Worker:
    """Runs ``handlers`` (tool name -> callable taking a :class:`Job`) for the
    tasks it claims as ``worker_id``, at most ``concurrency`` at once.

    :meth:`run` blocks until :meth:`stop`; a Worker runs once. ``claim_wait``
    is the ClaimTasks long-poll (capped by the server), ``lease_duration``
    the lease asked for on claims and heartbeats (None: the server's, 30 s
    by default), ``shutdown_grace`` how long :meth:`stop` lets running
    handlers finish before it hands their tasks back (FailTask, retryable,
    "worker stopping"). Python cannot kill a thread: a handler that ignores
    ``job.cancelled`` keeps its thread until it returns.
    """

    def __init__(
        self,
        client: "Client",
        worker_id: str,
        handlers: Mapping[str, Callable[[Job], Any]],
        *,
        concurrency: int = 10,
        claim_wait: float = 20.0,
        lease_duration: Optional[float] = None,
        shutdown_grace: float = 30.0,
    ):
        if not worker_id:
            raise ValueError("worker_id is required")
        if not handlers:
            raise ValueError("at least one handler is required")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if claim_wait < 0 or shutdown_grace < 0:
            raise ValueError("claim_wait and shutdown_grace must not be negative")
        if lease_duration is not None and lease_duration <= 0:
            raise ValueError("lease_duration must be positive")
        self._workers = client.workers
        self._worker_id = worker_id
        self._handlers = dict(handlers)
        self._concurrency = concurrency
        self._claim_wait = claim_wait
        self._lease_duration = lease_duration
        self._shutdown_grace = shutdown_grace
        # One reentrant lock for all shared state, so that stop() may run in
        # a signal handler that interrupted this very thread.
        self._changed = threading.Condition(threading.RLock())
        self._stopping = False
        self._started = False
        self._running: set[Job] = set()
        self._claim_call = None
        self._fatal: Optional[Exception] = None
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="taskstream-handler")

    def run(self) -> None:
        """Claims and runs tasks until :meth:`stop`, then lets running
        handlers finish (up to ``shutdown_grace``) and returns. Raises the
        ClaimTasks error that ended it, if one did (after the same shutdown)."""
        with self._changed:
            if self._started:
                raise RuntimeError("a Worker runs once")
            self._started = True
        # The loop has a thread of its own: the caller's only waits for it,
        # so a signal handler calling stop() finds no lock of ours held.
        loop = threading.Thread(target=self._loop, name="taskstream-worker")
        loop.start()
        try:
            _join(loop)
        except BaseException:
            # KeyboardInterrupt: shut down as stop() would, then let it through.
            self.stop()
            _join(loop)
            raise
        if self._fatal is not None:
            raise self._fatal

    def stop(self) -> None:
        """Ends :meth:`run`: claiming stops at once. Callable from any thread
        or a signal handler, before or during run()."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
            call = self._claim_call
        if call is not None:
            call.cancel()

    def _loop(self) -> None:
        try:
            self._claim_until_stopped()
        except Exception as error:  # noqa: BLE001 - run() raises it
            self._fatal = error
        finally:
            self._shut_down()

    def _claim_until_stopped(self) -> None:
        backoff = Backoff()
        while True:
            free = self._wait_for_free_slots()
            if free == 0:
                return
            began = time.monotonic()
            try:
                claimed = self._claim(min(free, _MAX_CLAIM))
            except (grpc.RpcError, grpc.FutureCancelledError) as error:
                if self._is_stopping():
                    return
                if not isinstance(error, grpc.RpcError) or error.code() not in _TRANSIENT:
                    raise
                log.warning("ClaimTasks failed (%s), retrying: %s", error.code().name, error.details())
                self._sleep_unless_stopped(backoff.next())
                continue
            backoff.reset()
            if not claimed:
                self._sleep_unless_stopped(began + _MIN_CLAIM_INTERVAL - time.monotonic())
            # Tasks a claim returned as stop() came in run like any other: the
            # shutdown gives them their grace.
            for task in claimed:
                self._start(task)

    def _wait_for_free_slots(self) -> int:
        """How many handlers may start now; 0 once stopping."""
        with self._changed:
            self._changed.wait_for(lambda: self._stopping or len(self._running) < self._concurrency)
            return 0 if self._stopping else self._concurrency - len(self._running)

    def _claim(self, max_tasks: int) -> list:
        request = worker_service_pb2.ClaimTasksRequest(
            worker_id=self._worker_id, tool_names=sorted(self._handlers), max_tasks=max_tasks, wait=_duration(self._claim_wait)
        )
        if self._lease_duration is not None:
            request.lease_duration.CopyFrom(_duration(self._lease_duration))
        call = self._workers.ClaimTasks.future(request, timeout=self._claim_wait + _CALL_TIMEOUT)
        with self._changed:
            self._claim_call = call
            stopping = self._stopping
        if stopping:
            call.cancel()
        try:
            return list(call.result().tasks)
        finally:
            with self._changed:
                self._claim_call = None

    def _start(self, claimed: worker_service_pb2.ClaimedTask) -> None:
        job = Job(self._workers, claimed.task, claimed.lease)
        with self._changed:
            self._running.add(job)
        threading.Thread(target=self._heartbeat, args=(job,), name="taskstream-heartbeat", daemon=True).start()
        self._pool.submit(self._run_job, job)

    def _run_job(self, job: Job) -> None:
        try:
            method, request = self._outcome(job)
            if job._take() and job._reportable:
                self._settle(job, method, request)
        finally:
            job._ended.set()
            with self._changed:
                self._running.discard(job)
                self._changed.notify_all()

    def _outcome(self, job: Job) -> tuple:
        """Runs the handler: the settle call its return or exception asks for.
        A value that is not JSON fails the task like an exception would."""
        try:
            try:
                value = self._handlers[job.task.tool_name](job)
            except Suspend as suspend:
                return "SuspendTask", worker_service_pb2.SuspendTaskRequest(payload=to_value(suspend.payload), **job._ids())
            return "CompleteTask", worker_service_pb2.CompleteTaskRequest(result=to_value(value), **job._ids())
        except BaseException as error:  # noqa: BLE001 - any handler error fails the task, SystemExit too
            return "FailTask", worker_service_pb2.FailTaskRequest(error=_task_error(error), **job._ids())

    def _heartbeat(self, job: Job) -> None:
        """Extends the lease every third of it until the task is settled, and
        cancels the job when the server says so or the lease is lost."""
        interval = job._heartbeat_interval
        due = time.monotonic() + interval
        while not job._ended.wait(max(due - time.monotonic(), 0)):
            due += interval
            request = worker_service_pb2.HeartbeatRequest(**job._ids())
            if self._lease_duration is not None:
                request.lease_duration.CopyFrom(_duration(self._lease_duration))
            try:
                response = self._workers.Heartbeat(request, timeout=2 * interval)
            except grpc.RpcError as error:
                if error.code() in _LEASE_GONE:
                    job._lose_lease()
                    return
                # The lease may still hold: keep the schedule.
                log.warning("Heartbeat of task %s failed (%s): %s", job.task.task_id, error.code().name, error.details())
                continue
            job._renew(response.lease)
            if response.cancel_requested:
                job._cancel("cancel requested")

    def _settle(self, job: Job, method: str, request, fallback: bool = False) -> None:
        """Makes the settle call, again after a transient error while the
        lease may hold; a refusal (the lease is gone) is dropped."""
        backoff = Backoff()
        for attempt in range(1, _SETTLE_ATTEMPTS + 1):
            try:
                getattr(self._workers, method)(request, timeout=_CALL_TIMEOUT)
                return
            except grpc.RpcError as error:
                code = error.code()
                if code in _LEASE_GONE:
                    log.info("%s of task %s refused, dropped: %s", method, job.task.task_id, error.details())
                    return
                if code in _CONTENT_REFUSED and not fallback:
                    # What the call carries is refused (too large, too deep): each
                    # retry would end the same way. Fail the task saying why, once,
                    # rather than leave it to its lease.
                    refused = _refusal(method, request, error)
                    return self._settle(job, "FailTask", worker_service_pb2.FailTaskRequest(error=refused, **job._ids()), fallback=True)
                pause = backoff.next()
                if code not in RETRYABLE or attempt == _SETTLE_ATTEMPTS or time.monotonic() + pause > job._lease_deadline:
                    log.error("%s of task %s failed (%s): %s", method, job.task.task_id, code.name, error.details())
                    return
                time.sleep(pause)

    def _shut_down(self) -> None:
        """Gives running handlers the grace, then cancels the rest and hands
        their tasks back so that another worker takes them at once."""
        with self._changed:
            self._stopping = True
            self._changed.wait_for(lambda: not self._running, timeout=self._shutdown_grace)
            left = list(self._running)
        for job in left:
            if not job._take():
                continue  # its handler returned just now and settles it
            job._cancel("worker stopping")
            if job._reportable:
                error = task_pb2.TaskError(message="worker stopping", retryable=True)
                self._settle(job, "FailTask", worker_service_pb2.FailTaskRequest(error=error, **job._ids()))
        self._pool.shutdown(wait=False)

    def _is_stopping(self) -> bool:
        with self._changed:
            return self._stopping

    def _sleep_unless_stopped(self, seconds: float) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._stopping, timeout=seconds)


def _join(thread: threading.Thread) -> None:
    """Waits for ``thread`` in short joins. A signal may reach any thread, and
    Python runs its handler in the main thread only when that thread next
    runs: one join without a timeout would keep a SIGTERM handler calling
    stop() from ever running."""
    while thread.is_alive():
        thread.join(0.2)


def to_value(value: Any) -> struct_pb2.Value:
    """A JSON value (None, bool, number, str, list, dict) as a google.protobuf.Value; a Value as is."""
    if isinstance(value, struct_pb2.Value):
        return value
    return json_format.ParseDict(value, struct_pb2.Value())


def _task_error(error: BaseException) -> task_pb2.TaskError:
    stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if not isinstance(error, Failure):
        message = "".join(traceback.format_exception_only(type(error), error)).strip()
        return task_pb2.TaskError(message=message, stack=stack, retryable=True)
    task_error = task_pb2.TaskError(message=error.message, stack=stack, code=error.code, retryable=error.retryable)
    if error.details is not None:
        try:
            task_error.details.update(error.details)
        except ValueError:
            # Still fail the task, as asked, rather than leave it to its lease.
            task_error.ClearField("details")
            task_error.message += " (its details are not JSON and were left out)"
    return task_error


def _refusal(method: str, request, error: grpc.RpcError) -> task_pb2.TaskError:
    """The failure that stands for a settle call refused for its content: why,
    and the start of the handler's error if it was one."""
    from taskstream import error_reason  # here: taskstream imports this module

    code = error_reason(error)[0] or error.code().name
    message = f"{method} refused: {error.details()}"
    if method != "FailTask":
        return task_pb2.TaskError(message=message, code=code)
    original = request.error.message
    excerpt = original if len(original) <= _REFUSED_ERROR_EXCERPT else original[:_REFUSED_ERROR_EXCERPT] + "…"
    return task_pb2.TaskError(message=f"{message}; the error was: {excerpt}", code=code, retryable=request.error.retryable)


def _lease_seconds_left(lease: task_pb2.Lease) -> float:
    """The lease's time left by the local clock (the server's expire_time less now)."""
    return lease.expire_time.ToNanoseconds() / 1e9 - time.time()


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration
