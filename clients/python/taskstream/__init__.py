"""A Python client for taskstream.

The generated messages and gRPC stubs (grpcio) are in ``taskstream.v1``; this
module puts them on one channel (:class:`Client`) and adds a StreamTasks
:class:`Follower` that resumes from its cursor after a disconnect, as the Go
client's does, and helpers to read a taskstream error's ``ErrorInfo``.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional
from urllib.parse import urlsplit

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from taskstream.v1 import task_service_pb2, task_service_pb2_grpc, worker_service_pb2_grpc
from taskstream._retry import RETRYABLE, Backoff
from taskstream.worker import Failure, Job, Suspend, Worker

__all__ = [
    "Client",
    "Follower",
    "Message",
    "retryable",
    "error_info",
    "error_reason",
    "oldest_sequence",
    "Worker",
    "Job",
    "Suspend",
    "Failure",
]

# Ping an idle connection after 30 s and drop it when the ping gets no answer
# within 15 s, so a stream whose peer vanished ends (UNAVAILABLE) and resumes.
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 15_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC's default reconnect backoff grows to 120 s: after a server restart
    # a follower would wait that long for the channel. Keep it to the
    # Follower's own backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # The server refuses messages over 4 MiB; so does the client by default.
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
]


class Client:
    """taskstream's two services on one gRPC channel (one HTTP/2 connection).

    ``target`` is a URL (``http://127.0.0.1:7420``, or ``https://…`` for a
    server with a certificate) or a gRPC target (``127.0.0.1:7420``, plain
    text). Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, target: str, *, root_certificates: Optional[bytes] = None, options: tuple = ()):
        address, secure = _address(target)
        channel_options = _KEEPALIVE + list(options)
        if secure or root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(address, credentials, options=channel_options)
        else:
            self.channel = grpc.insecure_channel(address, options=channel_options)
        self.tasks = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self.workers = worker_service_pb2_grpc.WorkerServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _address(target: str) -> tuple[str, bool]:
    if "://" not in target:
        return target, False
    url = urlsplit(target)
    if url.scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {target!r}")
    secure = url.scheme == "https"
    return f"{url.hostname}:{url.port or (443 if secure else 80)}", secure


@dataclass(frozen=True)
class Message:
    """One message of the stream, or the Follower's notice that it starts over."""

    #: The server's message (event, snapshot_complete or heartbeat); None when ``restart`` is set.
    response: Optional[task_service_pb2.StreamTasksResponse] = None
    #: An event of the snapshot: a task running as of the snapshot's sequence,
    #: not a change. Snapshot events come in no particular order; snapshot_complete ends them.
    snapshot: bool = False
    #: Why the Follower starts over without a cursor: a snapshot that broke off
    #: before snapshot_complete, or CURSOR_EXPIRED. A fresh snapshot follows
    #: (unless the request skips it): whatever was built before is stale.
    restart: Optional[grpc.RpcError] = None


class Follower:
    """Reads StreamTasks and, after a disconnect, calls again from the last
    sequence it handled, following README's rules for resuming:

    - Its cursor is the sequence of the last event, snapshot_complete or
      heartbeat handed out whose consumer asked for the next message. The
      snapshot's events (running tasks, before snapshot_complete) do not move it.
    - After an error ``retry`` accepts, it waits (backoff with jitter) and
      calls again with ``after_sequence`` = cursor: the server replays every
      matching event after it, then goes live, with no gap and no repeat.
    - Without a cursor yet (the stream broke before snapshot_complete), it
      calls again as the first time, and the snapshot starts over.
    - A cursor older than the log still holds (FAILED_PRECONDITION,
      CURSOR_EXPIRED) cannot be resumed: it drops the cursor and takes a fresh
      snapshot (or, with skip_snapshot, goes live from the log's end).
    - The server sends a heartbeat at least every heartbeat_interval (15 s
      unless the request asks otherwise). A call silent for twice that plus
      5 s is given up as dead and resumed: grpcio can leave a call that
      started as its connection closed waiting forever, deaf even to
      cancel(), and only the heartbeat's absence tells.

    Iterate :meth:`messages` in one thread; :meth:`close` and :attr:`cursor`
    may be used from any thread.
    """

    def __init__(
        self,
        tasks: task_service_pb2_grpc.TaskServiceStub,
        request: task_service_pb2.StreamTasksRequest,
        *,
        retry: Optional[Callable[[grpc.RpcError], bool]] = None,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        on_retry: Optional[Callable[[grpc.RpcError, float], None]] = None,
    ):
        self._tasks = tasks
        self._request = request
        self._retry = retry or retryable
        self._min_backoff = max(min_backoff, 0.001)
        self._max_backoff = max(max_backoff, self._min_backoff)
        self._on_retry = on_retry
        self._lock = threading.Lock()
        self._cursor: Optional[int] = request.after_sequence if request.HasField("after_sequence") else None
        self._call = None
        self._closed = threading.Event()

    @property
    def cursor(self) -> Optional[int]:
        """The sequence to resume after, or None before the first snapshot_complete."""
        with self._lock:
            return self._cursor

    def close(self) -> None:
        """Ends :meth:`messages`: the call in flight is cancelled and the iteration stops."""
        self._closed.set()
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()

    def messages(self) -> Iterator[Message]:
        """Every message, across as many calls as it takes, until :meth:`close`
        or an error ``retry`` refuses (raised; the cursor stays valid)."""
        backoff = Backoff(self._min_backoff, self._max_backoff)
        while not self._closed.is_set():
            delivered = False
            try:
                for message in self._one_call():
                    delivered = True
                    yield message
                # The server does not end a stream unprompted: resume as after any disconnect.
                error: grpc.RpcError = _Unavailable("StreamTasks ended")
            except grpc.RpcError as e:
                error = e
            if self._closed.is_set():
                return
            if delivered:
                backoff.reset()
            if error_reason(error)[0] == "CURSOR_EXPIRED" and self.cursor is not None:
                self._set_cursor(None)
                yield Message(restart=error)
                continue
            if not self._retry(error):
                raise error
            if self.cursor is None and delivered:
                # The snapshot broke off: the next call sends it again from the start.
                yield Message(restart=error)
            sleep = backoff.next()
            if self._on_retry is not None:
                self._on_retry(error, sleep)
            if self._closed.wait(sleep):
                return

    def _one_call(self) -> Iterator[Message]:
        cursor = self.cursor
        request = task_service_pb2.StreamTasksRequest()
        request.CopyFrom(self._request)
        request.ClearField("after_sequence")
        if cursor is not None:
            request.after_sequence = cursor
        # With a cursor no snapshot is sent; without one, every event before
        # snapshot_complete is the snapshot's.
        in_snapshot = cursor is None
        call = self._tasks.StreamTasks(request)
        with self._lock:
            self._call = call
        if self._closed.is_set():
            call.cancel()
        try:
            for response in self._responses(call, _silence_limit(request)):
                kind = response.WhichOneof("message")
                sequence = getattr(response, kind).sequence
                moves = kind == "snapshot_complete" or not in_snapshot
                yield Message(response=response, snapshot=in_snapshot and kind == "event")
                # The consumer asked for the next message: this one is handled.
                if kind == "snapshot_complete":
                    in_snapshot = False
                if moves and (cursor is None or sequence > cursor):
                    cursor = sequence
                    self._set_cursor(cursor)
        finally:
            call.cancel()
            with self._lock:
                self._call = None

    def _responses(self, call, silence_limit: float) -> Iterator[task_service_pb2.StreamTasksResponse]:
        """The call's responses, read by a thread of its own so that a call
        silent past `silence_limit` seconds can be left behind (see the class
        comment). The small queue keeps HTTP/2 flow control in charge."""
        responses: queue.Queue = queue.Queue(maxsize=64)
        done = threading.Event()

        def read() -> None:
            try:
                for response in call:
                    _put(responses, response, done)
                _put(responses, _END, done)
            except grpc.RpcError as error:
                _put(responses, error, done)

        threading.Thread(target=read, name="taskstream-follower-read", daemon=True).start()
        try:
            deadline = time.monotonic() + silence_limit
            while True:
                try:
                    item = responses.get(timeout=0.25)
                except queue.Empty:
                    if self._closed.is_set():
                        return
                    if time.monotonic() > deadline:
                        raise _Unavailable(f"StreamTasks sent nothing for {silence_limit:g} s") from None
                    continue
                deadline = time.monotonic() + silence_limit
                if item is _END:
                    return
                if isinstance(item, grpc.RpcError):
                    raise item
                yield item
        finally:
            # The caller, _one_call, cancels the call.
            done.set()

    def _set_cursor(self, cursor: Optional[int]) -> None:
        with self._lock:
            self._cursor = cursor


_END = object()
_DEFAULT_HEARTBEAT_S = 15.0


def _put(responses: queue.Queue, item, done: threading.Event) -> None:
    """Hands an item to the queue's reader, waiting while it is full; gives up once the reader has left."""
    while not done.is_set():
        try:
            responses.put(item, timeout=0.25)
            return
        except queue.Full:
            continue


def _silence_limit(request: task_service_pb2.StreamTasksRequest) -> float:
    interval = _DEFAULT_HEARTBEAT_S
    if request.HasField("heartbeat_interval"):
        interval = request.heartbeat_interval.ToTimedelta().total_seconds() or _DEFAULT_HEARTBEAT_S
    return 2 * interval + 5.0


class _Unavailable(grpc.RpcError):
    """A call the Follower ends itself, and resumes like a lost connection: one
    the server ended without an error, or one silent for too long."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return ()


def retryable(error: grpc.RpcError) -> bool:
    """Whether a StreamTasks call that failed with ``error`` is worth making
    again from the cursor: UNAVAILABLE (server shutdown, storage out of reach,
    a lost connection), the codes a broken connection or stream shows as
    (UNKNOWN, INTERNAL, ABORTED, CANCELLED), and DEADLINE_EXCEEDED."""
    return error.code() in RETRYABLE


def error_info(error: grpc.RpcError) -> Optional[error_details_pb2.ErrorInfo]:
    """The google.rpc.ErrorInfo detail of a taskstream error, if it has one."""
    try:
        status = rpc_status.from_call(error)
    except (AttributeError, ValueError):
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def error_reason(error: grpc.RpcError) -> tuple[str, dict[str, str]]:
    """The reason of a taskstream error's ErrorInfo ("CURSOR_EXPIRED",
    "LEASE_MISMATCH", …) and its metadata, or ("", {})."""
    info = error_info(error)
    return (info.reason, dict(info.metadata)) if info is not None else ("", {})


def oldest_sequence(error: grpc.RpcError) -> Optional[int]:
    """The oldest cursor the server still holds, from a CURSOR_EXPIRED error."""
    reason, metadata = error_reason(error)
    if reason != "CURSOR_EXPIRED" or "oldest_sequence" not in metadata:
        return None
    return int(metadata["oldest_sequence"])
