import { create } from "@bufbuild/protobuf";
import { LeaseSchema, type Lease } from "../../gen/taskstream/v1/task_pb.js";
import { timestampFromMs } from "../domain/time.js";
import type { Lease as StoredLease } from "../storage/task-store.js";

export function leaseMessage(lease: StoredLease): Lease {
  return create(LeaseSchema, { leaseId: lease.leaseId, expireTime: timestampFromMs(lease.expireTime) });
}
