import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from taskstream.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Backpressure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKPRESSURE_UNSPECIFIED: _ClassVar[Backpressure]
    BACKPRESSURE_QUEUE: _ClassVar[Backpressure]
    BACKPRESSURE_REJECT: _ClassVar[Backpressure]

class TaskTimeField(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_TIME_FIELD_UNSPECIFIED: _ClassVar[TaskTimeField]
    TASK_TIME_FIELD_CREATE_TIME: _ClassVar[TaskTimeField]
    TASK_TIME_FIELD_START_TIME: _ClassVar[TaskTimeField]
    TASK_TIME_FIELD_COMPLETE_TIME: _ClassVar[TaskTimeField]
BACKPRESSURE_UNSPECIFIED: Backpressure
BACKPRESSURE_QUEUE: Backpressure
BACKPRESSURE_REJECT: Backpressure
TASK_TIME_FIELD_UNSPECIFIED: TaskTimeField
TASK_TIME_FIELD_CREATE_TIME: TaskTimeField
TASK_TIME_FIELD_START_TIME: TaskTimeField
TASK_TIME_FIELD_COMPLETE_TIME: TaskTimeField

class ClaimOptions(_message.Message):
    __slots__ = ("worker_id", "lease_duration")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_DURATION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    lease_duration: _duration_pb2.Duration
    def __init__(self, worker_id: _Optional[str] = ..., lease_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DispatchTaskRequest(_message.Message):
    __slots__ = ("request_id", "tool_name", "tool_call_id", "args", "agent_id", "run_id", "thread_id", "resource_id", "max_retries", "timeout", "claim", "backpressure", "retry_policy")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    BACKPRESSURE_FIELD_NUMBER: _ClassVar[int]
    RETRY_POLICY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    tool_name: str
    tool_call_id: str
    args: _struct_pb2.Struct
    agent_id: str
    run_id: str
    thread_id: str
    resource_id: str
    max_retries: int
    timeout: _duration_pb2.Duration
    claim: ClaimOptions
    backpressure: Backpressure
    retry_policy: _task_pb2.RetryPolicy
    def __init__(self, request_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., tool_call_id: _Optional[str] = ..., args: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., thread_id: _Optional[str] = ..., resource_id: _Optional[str] = ..., max_retries: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., claim: _Optional[_Union[ClaimOptions, _Mapping]] = ..., backpressure: _Optional[_Union[Backpressure, str]] = ..., retry_policy: _Optional[_Union[_task_pb2.RetryPolicy, _Mapping]] = ...) -> None: ...

class DispatchTaskResponse(_message.Message):
    __slots__ = ("task", "lease", "created")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    lease: _task_pb2.Lease
    created: bool
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., lease: _Optional[_Union[_task_pb2.Lease, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class DispatchTasksRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[DispatchTaskRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[DispatchTaskRequest, _Mapping]]] = ...) -> None: ...

class DispatchTasksResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[DispatchTaskResult]
    def __init__(self, results: _Optional[_Iterable[_Union[DispatchTaskResult, _Mapping]]] = ...) -> None: ...

class DispatchTaskResult(_message.Message):
    __slots__ = ("dispatched", "error")
    DISPATCHED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    dispatched: DispatchTaskResponse
    error: _task_pb2.ItemError
    def __init__(self, dispatched: _Optional[_Union[DispatchTaskResponse, _Mapping]] = ..., error: _Optional[_Union[_task_pb2.ItemError, _Mapping]] = ...) -> None: ...

class CancelTaskRequest(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CancelTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class ResumeTaskRequest(_message.Message):
    __slots__ = ("task_id", "resume_data", "claim")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_DATA_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    resume_data: _struct_pb2.Value
    claim: ClaimOptions
    def __init__(self, task_id: _Optional[str] = ..., resume_data: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., claim: _Optional[_Union[ClaimOptions, _Mapping]] = ...) -> None: ...

class ResumeTaskResponse(_message.Message):
    __slots__ = ("task", "lease")
    TASK_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    lease: _task_pb2.Lease
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ..., lease: _Optional[_Union[_task_pb2.Lease, _Mapping]] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("task_id", "read_mask")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    READ_MASK_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    read_mask: _field_mask_pb2.FieldMask
    def __init__(self, task_id: _Optional[str] = ..., read_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("task",)
    TASK_FIELD_NUMBER: _ClassVar[int]
    task: _task_pb2.Task
    def __init__(self, task: _Optional[_Union[_task_pb2.Task, _Mapping]] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("field", "start_time", "end_time")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    field: TaskTimeField
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, field: _Optional[_Union[TaskTimeField, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("filter", "tool_call_id", "statuses", "time_range", "order_by", "descending", "page_size", "page_token", "read_mask")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    DESCENDING_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    READ_MASK_FIELD_NUMBER: _ClassVar[int]
    filter: _task_pb2.TaskFilter
    tool_call_id: str
    statuses: _containers.RepeatedScalarFieldContainer[_task_pb2.TaskStatus]
    time_range: TimeRange
    order_by: TaskTimeField
    descending: bool
    page_size: int
    page_token: str
    read_mask: _field_mask_pb2.FieldMask
    def __init__(self, filter: _Optional[_Union[_task_pb2.TaskFilter, _Mapping]] = ..., tool_call_id: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[_task_pb2.TaskStatus, str]]] = ..., time_range: _Optional[_Union[TimeRange, _Mapping]] = ..., order_by: _Optional[_Union[TaskTimeField, str]] = ..., descending: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., read_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token", "total_size")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[_task_pb2.Task]
    next_page_token: str
    total_size: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[_task_pb2.Task, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class ListTaskEventsRequest(_message.Message):
    __slots__ = ("task_id", "page_size", "page_token")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    page_size: int
    page_token: str
    def __init__(self, task_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTaskEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token", "total_size")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_task_pb2.TaskEvent]
    next_page_token: str
    total_size: int
    def __init__(self, events: _Optional[_Iterable[_Union[_task_pb2.TaskEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total_size: _Optional[int] = ...) -> None: ...

class StreamTasksRequest(_message.Message):
    __slots__ = ("filter", "after_sequence", "skip_snapshot", "heartbeat_interval")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SKIP_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    filter: _task_pb2.TaskFilter
    after_sequence: int
    skip_snapshot: bool
    heartbeat_interval: _duration_pb2.Duration
    def __init__(self, filter: _Optional[_Union[_task_pb2.TaskFilter, _Mapping]] = ..., after_sequence: _Optional[int] = ..., skip_snapshot: _Optional[bool] = ..., heartbeat_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamTasksResponse(_message.Message):
    __slots__ = ("event", "snapshot_complete", "heartbeat")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    event: _task_pb2.TaskEvent
    snapshot_complete: SnapshotComplete
    heartbeat: StreamHeartbeat
    def __init__(self, event: _Optional[_Union[_task_pb2.TaskEvent, _Mapping]] = ..., snapshot_complete: _Optional[_Union[SnapshotComplete, _Mapping]] = ..., heartbeat: _Optional[_Union[StreamHeartbeat, _Mapping]] = ...) -> None: ...

class SnapshotComplete(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class StreamHeartbeat(_message.Message):
    __slots__ = ("sequence", "server_time")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
