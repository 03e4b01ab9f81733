import type { ServiceImpl } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import { StreamTasksResponseSchema, type StreamTasksRequest, type StreamTasksResponse, type TaskService } from "../../gen/taskstream/v1/task_service_pb.js";
import { TaskEventSchema } from "../../gen/taskstream/v1/task_pb.js";
import { create, fromBinary } from "@bufbuild/protobuf";
import { msFromDuration, timestampFromMs } from "../domain/time.js";
import { invalidArgument, taskstreamError } from "../errors.js";
import { logBounds, readLogEntries, type EventFilter, type LogEntry } from "../storage/event-log.js";
import { runningSnapshot } from "../storage/task-queries.js";
import type { ServiceDeps } from "./deps.js";
import { rawBytes, speaksJson, withEncodedField } from "./encoded-response.js";
import { taskFilter } from "./validate.js";

type StreamTasks = ServiceImpl<typeof TaskService>["streamTasks"];
type Response = ReturnType<StreamTasks> extends AsyncIterable<infer R> ? R : never;

export const DEFAULT_HEARTBEAT_MS = 15_000;
export const MIN_HEARTBEAT_MS = 100;
export const MAX_HEARTBEAT_MS = 300_000;
/** How many log events one step scans, from the tail's window or from the log. */
const STEP = 1000;

/**
 * StreamTasks: the running tasks' snapshot read at a sequence S, then
 * snapshot_complete{S}, then every matching event after S, in order, once.
 * With after_sequence, the events after that cursor instead. A stream only
 * ever holds its cursor: events come from the shared tail's window, or from
 * the log when the stream is behind it, so a slow reader costs no memory.
 */
export function streamTasks(deps: ServiceDeps): StreamTasks {
  return async function* (req, ctx) {
    const filter = taskFilter(req.filter);
    const send = speaksJson(ctx.requestHeader) ? decodedResponse : encodedResponse;
    const heartbeatMs = heartbeatInterval(req);
    // Counted until the call ends. The abort matters when the client vanished
    // while a write waited for a drain that never comes: this generator then
    // stays parked at a yield (holding no timer or waiter) and never reaches
    // its finally; it is collected with the dead socket.
    let open = true;
    const release = () => {
      if (open) deps.gauges.activeStreams--;
      open = false;
    };
    deps.gauges.activeStreams++;
    ctx.signal.addEventListener("abort", release, { once: true });
    try {
      let position: number;
      if (req.afterSequence !== undefined) {
        position = await checkCursor(deps, req.afterSequence);
      } else {
        const snapshot = req.skipSnapshot
          ? { sequence: (await logBounds(deps.db.kysely)).last, entries: [] }
          : await runningSnapshot(deps.db, filter);
        for (const entry of snapshot.entries) yield send(entry);
        yield { message: { case: "snapshotComplete", value: { sequence: BigInt(snapshot.sequence) } } };
        position = snapshot.sequence;
      }
      let lastSent = Date.now();
      for (;;) {
        ctx.signal.throwIfAborted();
        const step = deps.tail.read(position, filter, STEP) ?? (await readFromLog(deps, position, filter));
        for (const entry of step.events) yield send(entry);
        if (step.events.length > 0) lastSent = Date.now();
        position = step.through;
        if (position < deps.tail.lastSequence) continue;
        const untilHeartbeat = lastSent + heartbeatMs - Date.now();
        if (untilHeartbeat <= 0) {
          yield heartbeat(position);
          lastSent = Date.now();
          continue;
        }
        position = await deps.tail.waitFor(position, filter, untilHeartbeat, ctx.signal);
      }
    } finally {
      ctx.signal.removeEventListener("abort", release);
      release();
    }
  };
}

/**
 * A stream behind the tail's window catches up from the log, filtered in SQL,
 * unless retention deleted events it had not read: then its cursor expired.
 */
async function readFromLog(deps: ServiceDeps, position: number, filter: EventFilter) {
  await checkCursor(deps, BigInt(position));
  const through = deps.tail.lastSequence;
  const events = await readLogEntries(deps.db.kysely, { after: position, through, filter, limit: STEP });
  return { events, through: events.length === STEP ? events[events.length - 1].sequence : through };
}

/** A resume cursor must still be held by the log, and not be ahead of it. */
async function checkCursor(deps: ServiceDeps, cursor: bigint): Promise<number> {
  if (cursor < 0n) throw invalidArgument("after_sequence", "must not be negative");
  const { last, trimmedThrough } = await logBounds(deps.db.kysely);
  if (cursor < BigInt(trimmedThrough)) {
    throw taskstreamError(
      Code.FailedPrecondition,
      "CURSOR_EXPIRED",
      `after_sequence ${cursor} is older than the log holds; the oldest cursor still held is ${trimmedThrough}`,
      { oldest_sequence: String(trimmedThrough) },
    );
  }
  if (cursor > BigInt(last)) {
    throw taskstreamError(Code.OutOfRange, "CURSOR_AHEAD", `after_sequence ${cursor} is past the log's last sequence ${last}`, {
      last_sequence: String(last),
    });
  }
  return Number(cursor);
}

/** The client's interval, bounded by the server; a negative one is refused. */
function heartbeatInterval(req: StreamTasksRequest): number {
  if (req.heartbeatInterval === undefined) return DEFAULT_HEARTBEAT_MS;
  const ms = msFromDuration(req.heartbeatInterval);
  if (ms < 0 || req.heartbeatInterval.nanos < 0) throw invalidArgument("heartbeat_interval", "must not be negative");
  if (ms === 0) return DEFAULT_HEARTBEAT_MS;
  return Math.min(MAX_HEARTBEAT_MS, Math.max(MIN_HEARTBEAT_MS, ms));
}

// One response per log entry, shared by every stream that sends it.
const encodedResponses = new WeakMap<LogEntry, StreamTasksResponse>();
const decodedResponses = new WeakMap<LogEntry, StreamTasksResponse>();

/**
 * For binary codecs: the response with the entry's stored bytes as `event`,
 * sent verbatim (encoded-response.ts): no stream encodes the event again.
 */
function encodedResponse(entry: LogEntry): StreamTasksResponse {
  let response = encodedResponses.get(entry);
  if (!response) {
    response = withEncodedField(StreamTasksResponseSchema, {}, StreamTasksResponseSchema.field.event, [entry.payload], rawBytes);
    encodedResponses.set(entry, response);
  }
  return response;
}

/** For JSON codecs, which cannot carry raw bytes: the event decoded, once per entry. */
function decodedResponse(entry: LogEntry): StreamTasksResponse {
  let response = decodedResponses.get(entry);
  if (!response) {
    response = create(StreamTasksResponseSchema, { message: { case: "event", value: fromBinary(TaskEventSchema, entry.payload) } });
    decodedResponses.set(entry, response);
  }
  return response;
}

function heartbeat(sequence: number): Response {
  return { message: { case: "heartbeat", value: { sequence: BigInt(sequence), serverTime: timestampFromMs(Date.now()) } } } as Response;
}
