import { create, toBinary, type DescMessage, type JsonObject } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import { WireType } from "@bufbuild/protobuf/wire";
import {
  TaskCancelledSchema,
  TaskCompletedSchema,
  TaskFailedSchema,
  TaskOutputSchema,
  TaskQueuedSchema,
  TaskResumedSchema,
  TaskRunningSchema,
  TaskSuspendedSchema,
} from "../../gen/taskstream/v1/task_pb.js";
import type { EventKind } from "./event-log.js";
import { writeStructField } from "./json-wire.js";
import type { TaskRow } from "./schema.js";
import { WireWriter } from "./wire-writer.js";

const LEN = WireType.LengthDelimited;
const Varint = WireType.Varint;

/** TaskEvent's oneof kind: each case's field number and message. */
const KINDS: Record<NonNullable<EventKind["case"]>, { no: number; schema: DescMessage }> = {
  queued: { no: 20, schema: TaskQueuedSchema },
  running: { no: 21, schema: TaskRunningSchema },
  output: { no: 22, schema: TaskOutputSchema },
  completed: { no: 23, schema: TaskCompletedSchema },
  failed: { no: 24, schema: TaskFailedSchema },
  cancelled: { no: 25, schema: TaskCancelledSchema },
  suspended: { no: 26, schema: TaskSuspendedSchema },
  resumed: { no: 27, schema: TaskResumedSchema },
};

/**
 * The binary TaskEvent of a task's row, kind, sequence and time, written
 * straight: it decodes to what `eventFor` builds. Every change appends
 * events, and protobuf-es built and encoded each by reflection, its args
 * Struct a message per JSON value: ~30 us an event. The two kinds every task
 * has, queued and running, are written here in full; the others' small
 * messages still go through protobuf-es.
 */
export function eventBytes(w: WireWriter, task: TaskRow, kind: EventKind, sequence: number, now: number): Uint8Array {
  w.reset();
  if (sequence !== 0) w.tag(1, Varint).int64(sequence);
  w.secondsNanosField(2, now);
  w.stringField(3, task.task_id);
  w.stringField(4, task.tool_name);
  w.stringField(5, task.tool_call_id);
  w.stringField(6, task.agent_id);
  w.stringField(7, task.run_id);
  w.stringField(8, task.thread_id);
  w.stringField(9, task.resource_id);
  if (task.status !== 0) w.tag(10, Varint).int32(task.status);
  if (task.attempt !== 0) w.tag(11, Varint).int32(task.attempt);
  if (kind.case === undefined) throw new Error("an event needs a kind");
  w.tag(KINDS[kind.case].no, LEN);
  const start = w.begin();
  writeKind(w, kind);
  w.end(start);
  return w.finish();
}

function writeKind(w: WireWriter, kind: EventKind): void {
  switch (kind.case) {
    case "queued": {
      const { args, maxRetries, timeout } = kind.value;
      if (args) writeStructField(w, 1, args as JsonObject);
      if (maxRetries) w.tag(2, Varint).int32(maxRetries);
      secondsNanos(w, 3, timeout);
      return;
    }
    case "running": {
      const { args, startTime, workerId, resumeData } = kind.value;
      if (args) writeStructField(w, 1, args as JsonObject);
      secondsNanos(w, 2, startTime);
      if (workerId) w.stringField(3, workerId);
      if (resumeData) {
        w.tag(4, LEN);
        const value = w.begin();
        w.raw(toBinary(ValueSchema, create(ValueSchema, resumeData as Value)));
        w.end(value);
      }
      return;
    }
    default: {
      const { schema } = KINDS[kind.case!];
      w.raw(toBinary(schema, create(schema, kind.value as never)));
    }
  }
}

/** A Timestamp or Duration message field from its parts; left out when unset. */
function secondsNanos(w: WireWriter, no: number, value: { seconds?: bigint; nanos?: number } | undefined): void {
  if (!value) return;
  w.tag(no, LEN);
  const start = w.begin();
  if (value.seconds) w.tag(1, Varint).int64(Number(value.seconds));
  if (value.nanos) w.tag(2, Varint).int32(value.nanos);
  w.end(start);
}
