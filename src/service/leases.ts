import { create, toBinary } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { ItemErrorSchema, LeaseSchema, type Lease } from "../../gen/taskstream/v1/task_pb.js";
import { timestampFromMs } from "../domain/time.js";
import { writeTask } from "../storage/task-rows.js";
import type { Dispatched, ItemOutcome, Lease as StoredLease, LeasedTask } from "../storage/task-store.js";
import type { WireWriter } from "../storage/wire-writer.js";
import { itemError } from "./batches.js";

export function leaseMessage(lease: StoredLease): Lease {
  return create(LeaseSchema, { leaseId: lease.leaseId, expireTime: timestampFromMs(lease.expireTime) });
}

// The messages that carry tasks to producers and workers, written straight
// from their rows for binary calls (see encoded-response.ts): a claim or a
// batch dispatch of 100 tasks spent more encoding them than storing them.

const LEN = WireType.LengthDelimited;

/** A field holding a message whose content `write` writes. */
function messageField(w: WireWriter, no: number, write: () => void): void {
  w.tag(no, LEN);
  const start = w.begin();
  write();
  w.end(start);
}

/** Lease { string lease_id = 1; Timestamp expire_time = 2; } */
function writeLease(w: WireWriter, lease: StoredLease): void {
  w.stringField(1, lease.leaseId);
  if (lease.expireTime !== 0) w.secondsNanosField(2, lease.expireTime);
}

/** ClaimedTask { Task task = 1; Lease lease = 2; } */
export function writeClaimedTask(w: WireWriter, { task, lease }: LeasedTask): void {
  messageField(w, 1, () => writeTask(w, task));
  messageField(w, 2, () => writeLease(w, lease));
}

/** DispatchTaskResponse { Task task = 1; Lease lease = 2; bool created = 3; } */
function writeDispatched(w: WireWriter, { task, lease, created }: Dispatched): void {
  messageField(w, 1, () => writeTask(w, task));
  if (lease) messageField(w, 2, () => writeLease(w, lease));
  if (created) w.tag(3, WireType.Varint).bool(true);
}

/** DispatchTaskResult { oneof outcome { DispatchTaskResponse dispatched = 1; ItemError error = 2; } } */
export function writeDispatchResult(w: WireWriter, outcome: ItemOutcome<Dispatched>): void {
  if (outcome.ok) messageField(w, 1, () => writeDispatched(w, outcome.value));
  else messageField(w, 2, () => w.raw(toBinary(ItemErrorSchema, create(ItemErrorSchema, itemError(outcome.error)))));
}
