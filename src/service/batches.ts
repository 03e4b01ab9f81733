import type { ConnectError } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { ItemErrorSchema } from "../../gen/taskstream/v1/task_pb.js";
import type { TaskOutcomeSchema } from "../../gen/taskstream/v1/worker_service_pb.js";
import { insideField, invalidArgument } from "../errors.js";
import type { ItemOutcome } from "../storage/task-store.js";
import type { TaskRow } from "../storage/schema.js";

/**
 * A batch call's requests, each validated by its single call's own
 * `validate`, all before any is acted on: one invalid request fails the whole
 * call, its field named "requests[i].<field>".
 */
export function validateBatch<T, R>(requests: T[], max: number, validate: (request: T) => R): R[] {
  if (requests.length === 0 || requests.length > max) {
    throw invalidArgument("requests", `must hold 1 to ${max} requests, not ${requests.length}`);
  }
  return requests.map((request, i) => {
    try {
      return validate(request);
    } catch (err) {
      throw insideField(`requests[${i}]`, err);
    }
  });
}

/** Why one item did nothing: its error's code, message and ErrorInfo. */
export function itemError(error: ConnectError): MessageInitShape<typeof ItemErrorSchema> {
  const info = error.findDetails(ErrorInfoSchema)[0];
  return { code: error.code, message: error.rawMessage, reason: info?.reason ?? "", metadata: info?.metadata ?? {} };
}

/** What one completion or failure of a batch did: the task's status and its event, or the refusal. */
export function taskOutcome(outcome: ItemOutcome<TaskRow>): MessageInitShape<typeof TaskOutcomeSchema> {
  if (!outcome.ok) return { error: itemError(outcome.error) };
  return { status: outcome.value.status, sequence: BigInt(outcome.value.sequence) };
}
