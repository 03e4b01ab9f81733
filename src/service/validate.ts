import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import type { Duration, Timestamp, Value } from "@bufbuild/protobuf/wkt";
import type { TaskFilter } from "../../gen/taskstream/v1/task_pb.js";
import type { EventFilter } from "../storage/event-log.js";
import { invalidArgument } from "../errors.js";
import { msFromDuration, msFromTimestamp } from "../domain/time.js";

/** Identifiers and labels are short strings; a longer one is a mistake, not data. */
export const MAX_ID_LENGTH = 256;

/** A required identifier: non-empty and at most MAX_ID_LENGTH characters. */
export function requireId(field: string, value: string): string {
  if (value === "") throw invalidArgument(field, "is required");
  return optionalId(field, value);
}

/** An optional identifier: empty, or at most `max` characters. */
export function optionalId(field: string, value: string, max = MAX_ID_LENGTH): string {
  if (value.length > max) throw invalidArgument(field, `must be at most ${max} characters`);
  if (value.includes("\0")) throw invalidArgument(field, "must not contain NUL characters");
  return value;
}

/** A duration in milliseconds: the default when unset, refused when not positive or over max. */
export function durationMs(field: string, value: Duration | undefined, defaults: { default: number; max: number }): number {
  if (value === undefined) return defaults.default;
  if (value.nanos < 0 || value.nanos > 999_999_999) throw invalidArgument(field, "has invalid nanos");
  const ms = msFromDuration(value);
  if (ms <= 0) throw invalidArgument(field, "must be positive");
  if (ms > defaults.max) throw invalidArgument(field, `must be at most ${defaults.max} ms`);
  return ms;
}

/** A timestamp in milliseconds, or undefined when unset. */
export function timestampMs(field: string, value: Timestamp | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (value.nanos < 0 || value.nanos > 999_999_999) throw invalidArgument(field, "has invalid nanos");
  const ms = msFromTimestamp(value);
  if (!Number.isSafeInteger(ms) || ms < 0) throw invalidArgument(field, "is out of range");
  return ms;
}

/** An enum value that is a declared, specified member. */
export function requireEnum<E extends number>(field: string, value: E, members: Record<number, string>): E {
  if (value === 0 || members[value] === undefined) throw invalidArgument(field, `has unknown value ${value}`);
  return value;
}

export function intInRange(field: string, value: number, min: number, max: number): number {
  if (value < min || value > max) throw invalidArgument(field, `must be between ${min} and ${max}`);
  return value;
}

/** A stream's or list's TaskFilter, each field an optional identifier. */
export function taskFilter(filter: TaskFilter | undefined): EventFilter {
  return {
    agentId: optionalId("filter.agent_id", filter?.agentId ?? ""),
    runId: optionalId("filter.run_id", filter?.runId ?? ""),
    threadId: optionalId("filter.thread_id", filter?.threadId ?? ""),
    resourceId: optionalId("filter.resource_id", filter?.resourceId ?? ""),
    taskId: optionalId("filter.task_id", filter?.taskId ?? ""),
    toolName: optionalId("filter.tool_name", filter?.toolName ?? ""),
  };
}

/**
 * How many lists and structs a JSON value may nest. Each costs a decoder two
 * message levels (the Struct or ListValue, then its Value), and protobuf-es
 * and Python's protobuf refuse messages over 100 levels: a value at this
 * limit still decodes inside any message that carries it, where a deeper one
 * would be stored and then fail every client that reads it (every stream
 * replaying its event).
 */
export const MAX_JSON_DEPTH = 32;

/** A Value must have a kind, finite numbers and at most MAX_JSON_DEPTH nested levels: it is stored and served as JSON. */
export function requireJsonValue(field: string, value: Value | undefined): Value | undefined {
  if (value === undefined) return undefined;
  const visit = (path: string, v: Value, depth: number): void => {
    const kind = v.kind;
    switch (kind.case) {
      case undefined:
        throw invalidArgument(path, "has no kind set");
      case "numberValue":
        if (!Number.isFinite(kind.value)) throw invalidArgument(path, "must be a finite number");
        break;
      case "structValue":
        requireDepth(field, depth + 1);
        for (const [key, x] of Object.entries(kind.value.fields)) visit(`${path}.${key}`, x, depth + 1);
        break;
      case "listValue":
        requireDepth(field, depth + 1);
        kind.value.values.forEach((x, i) => visit(`${path}[${i}]`, x, depth + 1));
        break;
    }
  };
  visit(field, value, 0);
  return value;
}

/** A Struct, as protobuf-es hands it over (plain JSON), must hold only finite numbers and nest at most MAX_JSON_DEPTH levels. */
export function requireJsonObject(field: string, value: JsonObject | undefined): JsonObject {
  const visit = (path: string, v: JsonValue, depth: number): void => {
    if (typeof v === "number" && !Number.isFinite(v)) throw invalidArgument(path, "must be a finite number");
    if (v === null || typeof v !== "object") return;
    requireDepth(field, depth + 1);
    if (Array.isArray(v)) v.forEach((x, i) => visit(`${path}[${i}]`, x, depth + 1));
    else for (const [key, x] of Object.entries(v)) visit(`${path}.${key}`, x, depth + 1);
  };
  visit(field, value ?? {}, 0);
  return value ?? {};
}

function requireDepth(field: string, depth: number): void {
  if (depth > MAX_JSON_DEPTH) throw invalidArgument(field, `nests lists and objects more than ${MAX_JSON_DEPTH} levels deep`);
}
