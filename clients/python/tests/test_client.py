"""The Python client against a real server: a worker's loop, errors, and a
StreamTasks Follower through disconnects, a restart and an expired cursor."""

from __future__ import annotations

import sys
import threading
import time
import traceback

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2

from taskstream import Client, Follower, Message, error_reason, oldest_sequence, retryable
from taskstream.v1 import task_pb2, task_service_pb2, worker_service_pb2

AGENT = "py-follower"


def eventually(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def dispatch(client: Client, name: str, *, claim: bool = False, agent: str = AGENT):
    request = task_service_pb2.DispatchTaskRequest(tool_name="py-tool", tool_call_id=name, agent_id=agent)
    request.args.update({"name": name})
    if claim:
        request.claim.worker_id = "py-worker"
    response = client.tasks.DispatchTask(request, timeout=10)
    return response.task, response.lease


def complete(client: Client, task, lease) -> None:
    request = worker_service_pb2.CompleteTaskRequest(task_id=task.task_id, lease_id=lease.lease_id, result=struct_pb2.Value(string_value="done"))
    client.workers.CompleteTask(request, timeout=10)


def log_events(client: Client, after: int, agent: str = AGENT) -> list:
    """Every event of the agent's tasks after `after`, from storage, in sequence order."""
    tasks = client.tasks.ListTasks(task_service_pb2.ListTasksRequest(filter=task_pb2.TaskFilter(agent_id=agent), page_size=1000), timeout=10).tasks
    events = [e for t in tasks for e in client.tasks.ListTaskEvents(task_service_pb2.ListTaskEventsRequest(task_id=t.task_id), timeout=10).events]
    return sorted((e for e in events if e.sequence > after), key=lambda e: e.sequence)


class Recorder:
    """Reads a Follower's messages in a thread of its own and keeps them."""

    def __init__(self, follower: Follower):
        self.follower = follower
        self.seen: list[Message] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.follower.messages():
                self.seen.append(message)
        except BaseException as e:  # noqa: BLE001 - the test asserts on it
            self.error = e

    def stop(self) -> None:
        self.follower.close()
        self._thread.join(10)
        if self._thread.is_alive():
            stack = "".join(traceback.format_stack(sys._current_frames()[self._thread.ident]))
            raise AssertionError(f"Follower.close() did not end messages(); its thread is at:\n{stack}")

    def _responses(self):
        return [m for m in self.seen if m.response is not None]

    def snapshot_sequence(self) -> int | None:
        done = [m.response.snapshot_complete.sequence for m in self._responses() if m.response.HasField("snapshot_complete")]
        return done[-1] if done else None

    def snapshot_events(self) -> list:
        return [m.response.event for m in self._responses() if m.snapshot]

    def live_events(self) -> list:
        return [m.response.event for m in self._responses() if m.response.HasField("event") and not m.snapshot]


def identity(events) -> list:
    return [(e.sequence, e.tool_call_id, e.WhichOneof("kind")) for e in events]


def test_a_worker_claims_heartbeats_and_completes(start_server):
    server = start_server()
    with Client(server.url) as client:
        task, _ = dispatch(client, "work", agent="py-worker-loop")
        claimed = client.workers.ClaimTasks(
            worker_service_pb2.ClaimTasksRequest(worker_id="py", tool_names=["py-tool"], max_tasks=10, wait=duration_pb2.Duration(seconds=5)), timeout=10
        ).tasks
        assert [c.task.task_id for c in claimed] == [task.task_id]
        lease = claimed[0].lease
        beat = client.workers.Heartbeat(worker_service_pb2.HeartbeatRequest(task_id=task.task_id, lease_id=lease.lease_id), timeout=10)
        assert not beat.cancel_requested
        complete(client, task, lease)
        stored = client.tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id), timeout=10).task
        assert stored.status == task_pb2.TASK_STATUS_COMPLETED
        assert stored.result.string_value == "done"
        assert stored.args["name"] == "work"


def test_errors_carry_their_error_info(start_server):
    server = start_server()
    with Client(server.url) as client:
        with pytest.raises(grpc.RpcError) as caught:
            client.tasks.GetTask(task_service_pb2.GetTaskRequest(task_id="no-such-task"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(caught.value) == ("TASK_NOT_FOUND", {"task_id": "no-such-task"})
        assert not retryable(caught.value)
        with pytest.raises(grpc.RpcError) as caught:
            client.workers.CompleteTask(worker_service_pb2.CompleteTaskRequest(task_id="no-such-task", lease_id="x"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_the_follower_resumes_across_cut_connections_and_a_server_restart(start_server, proxy, tmp_path):
    first = start_server()
    px = proxy(first.address)
    direct = Client(first.url)
    dispatch(direct, "pending-before")
    running_before, running_lease = dispatch(direct, "running-before", claim=True)

    retries: list[grpc.RpcError] = []
    request = task_service_pb2.StreamTasksRequest(filter=task_pb2.TaskFilter(agent_id=AGENT), heartbeat_interval=duration_pb2.Duration(nanos=200_000_000))
    through_proxy = Client(f"http://{px.address}")
    recorder = Recorder(Follower(through_proxy.tasks, request, min_backoff=0.05, max_backoff=0.2, on_retry=lambda e, _: retries.append(e)))
    eventually(lambda: recorder.snapshot_sequence() is not None, "snapshot_complete")
    snapshot_at = recorder.snapshot_sequence()
    # The snapshot holds the running task, not the pending one.
    assert [e.tool_call_id for e in recorder.snapshot_events()] == ["running-before"]

    def burst(client: Client, prefix: str) -> None:
        for i in range(5):
            task, lease = dispatch(client, f"{prefix}-{i}", claim=True)
            complete(client, task, lease)

    burst(direct, "a")
    complete(direct, running_before, running_lease)
    eventually(lambda: len(recorder.live_events()) >= 11, "the first burst")
    px.cut()
    burst(direct, "b")
    eventually(lambda: len(retries) >= 1, "a retry after the cut")

    # A restart: the new process serves the same log, and the cursor holds.
    direct.close()
    first.stop()
    second = start_server(database=tmp_path / "taskstream.db")
    px.upstream = second.address
    direct = Client(second.url)
    burst(direct, "c")

    expected = identity(log_events(direct, after=snapshot_at))
    try:
        eventually(lambda: identity(recorder.live_events()) == expected, "every event after the snapshot, once, in order")
    finally:
        recorder.stop()
    # Every event after the snapshot, once, in order (pytest shows the difference if not).
    assert identity(recorder.live_events()) == expected, f"retries: {[(e.code(), e.details()) for e in retries]}"
    direct.close()
    through_proxy.close()
    assert recorder.error is None
    assert len(expected) == 1 + 3 * 5 * 3  # running-before's completion, and 15 tasks' queued, running, completed
    assert len(retries) >= 2
    assert [m for m in recorder.seen if m.restart is not None] == []
    assert recorder.follower.cursor >= expected[-1][0]


def test_the_follower_takes_a_fresh_snapshot_when_its_cursor_expired(start_server):
    server = start_server("--retain-completed-ms", "1", "--retention-interval-ms", "100")
    with Client(server.url) as client:
        done, lease = dispatch(client, "expires", claim=True)
        complete(client, done, lease)
        dispatch(client, "still-running", claim=True)

        def deleted() -> bool:
            try:
                client.tasks.GetTask(task_service_pb2.GetTaskRequest(task_id=done.task_id), timeout=10)
                return False
            except grpc.RpcError as e:
                return e.code() == grpc.StatusCode.NOT_FOUND

        eventually(deleted, "retention to delete the completed task")
        request = task_service_pb2.StreamTasksRequest(filter=task_pb2.TaskFilter(agent_id=AGENT), after_sequence=1)
        recorder = Recorder(Follower(client.tasks, request))
        eventually(lambda: recorder.snapshot_sequence() is not None, "a fresh snapshot")
        recorder.stop()

    restart = recorder.seen[0].restart
    assert restart is not None and restart.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(restart)[0] == "CURSOR_EXPIRED"
    assert oldest_sequence(restart) > 1
    assert [e.tool_call_id for e in recorder.snapshot_events()] == ["still-running"]
    assert recorder.error is None
