import { Code, ConnectError } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";

/** The ErrorInfo domain of every error taskstream raises. */
export const ERROR_DOMAIN = "taskstream";

/**
 * The machine-readable reasons clients can switch on, each carried in a
 * google.rpc.ErrorInfo detail next to its gRPC status code.
 */
export type ErrorReason =
  | "INVALID_ARGUMENT"
  | "TASK_NOT_FOUND"
  | "INVALID_TRANSITION"
  | "LEASE_MISMATCH"
  | "LEASE_EXPIRED"
  | "INVALID_PAGE_TOKEN"
  | "PAGE_TOKEN_MISMATCH"
  | "CURSOR_EXPIRED"
  | "CURSOR_AHEAD"
  | "CONCURRENCY_LIMIT"
  | "STREAM_LIMIT"
  | "STORAGE_CONFLICT"
  | "MESSAGE_TOO_LARGE"
  | "MALFORMED_MESSAGE"
  | "UNSUPPORTED_ENCODING"
  | "INVALID_HEADER"
  | "TASK_TOO_LARGE"
  | "RESPONSE_TOO_LARGE"
  | "SHUTTING_DOWN"
  | "STORAGE_UNAVAILABLE";

/** Builds a ConnectError whose details hold an ErrorInfo with the reason and metadata. */
export function taskstreamError(
  code: Code,
  reason: ErrorReason,
  message: string,
  metadata: Record<string, string> = {},
): ConnectError {
  return new ConnectError(message, code, undefined, [errorInfo(reason, metadata)]);
}

/** The ErrorInfo detail of a taskstream error. */
export function errorInfo(reason: ErrorReason, metadata: Record<string, string> = {}) {
  return { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason, domain: ERROR_DOMAIN, metadata }) };
}

export function invalidArgument(field: string, message: string): ConnectError {
  return taskstreamError(Code.InvalidArgument, "INVALID_ARGUMENT", `${field}: ${message}`, { field });
}

/**
 * An `invalidArgument` error with its field moved inside `parent`
 * ("requests[3]" makes "task_id" "requests[3].task_id"); any other error as it is.
 */
export function insideField(parent: string, err: unknown): unknown {
  if (!(err instanceof ConnectError) || err.code !== Code.InvalidArgument) return err;
  const info = err.findDetails(ErrorInfoSchema)[0];
  const field = info?.metadata.field;
  if (field === undefined || !err.rawMessage.startsWith(`${field}: `)) return err;
  const inside = `${parent}.${field}`;
  const message = `${inside}: ${err.rawMessage.slice(field.length + 2)}`;
  return taskstreamError(Code.InvalidArgument, info.reason as ErrorReason, message, { ...info.metadata, field: inside });
}

export function taskNotFound(taskId: string): ConnectError {
  return taskstreamError(Code.NotFound, "TASK_NOT_FOUND", `task ${taskId} not found`, { task_id: taskId });
}

/** Reads the ErrorInfo reason of an error, for tests and clients. */
export function errorReason(err: unknown): string | undefined {
  const connectErr = ConnectError.from(err);
  return connectErr.findDetails(ErrorInfoSchema)[0]?.reason;
}
