import type { ServiceImpl } from "@connectrpc/connect";
import { Code } from "@connectrpc/connect";
import { StreamTasksResponseSchema, type StreamTasksRequest, type StreamTasksResponse, type TaskService } from "../../gen/taskstream/v1/task_service_pb.js";
import { TaskEventSchema } from "../../gen/taskstream/v1/task_pb.js";
import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { msFromDuration, timestampFromMs } from "../domain/time.js";
import { invalidArgument, taskstreamError } from "../errors.js";
import type { EventTail } from "../fanout/event-tail.js";
import { frame, grpcFrameOutput, type GrpcFrameOutput } from "../server/grpc-fast-path.js";
import { logBounds, readEventSizes, readPayloads, readStoredEvents, runningSnapshotSizes, type EventFilter, type EventSize, type LogEntry } from "../storage/event-log.js";
import type { ServiceDeps } from "./deps.js";
import { rawBytes, speaksJson, withEncodedField } from "./encoded-response.js";
import { taskFilter } from "./validate.js";

type StreamTasks = ServiceImpl<typeof TaskService>["streamTasks"];

export const DEFAULT_HEARTBEAT_MS = 15_000;
export const MIN_HEARTBEAT_MS = 100;
export const MAX_HEARTBEAT_MS = 300_000;
/** How many log events one step scans, from the tail's window or from the log. */
const STEP = 1000;
/** The most bytes of frames one write carries: what a slow reader's stream may hold beyond its buffer. */
const CHUNK_BYTES = 64 * 1024;
/**
 * The most bytes of stored events a stream reads from storage at once (at
 * least one event), a page of the snapshot or of the log behind the tail's
 * window: what a stream holds while its client is slow to read.
 */
const READ_BYTES = 256 * 1024;
/** How many responses wait for connect-node (Connect, gRPC-Web, JSON) to take them, and how many of their events' bytes. */
const QUEUE_LIMIT = 100;
const QUEUE_BYTES = CHUNK_BYTES;

/** An event as the log stores it: all a stream sends of it. */
type StoredEvent = Pick<LogEntry, "sequence" | "payload">;

/**
 * StreamTasks: the running tasks' snapshot read at a sequence S, then
 * snapshot_complete{S}, then every matching event after S, in order, once.
 * With after_sequence, the events after that cursor instead. A stream only
 * ever holds its cursor: it reads pages from the shared tail's window, or from
 * the log when it is behind the window (the snapshot too), of at most
 * READ_BYTES and read only once the client takes more, until it is caught up; then the tail
 * hands it each new matching event as it reads it, which it writes at once.
 * Whenever the client reads slower than that, the stream goes back to reading
 * pages, so a slow reader costs no memory beyond one write.
 *
 * On the gRPC fast path events leave as frames built from their stored bytes,
 * a page per write; for connect-node's protocols, as one response each.
 */
export function streamTasks(deps: ServiceDeps): StreamTasks {
  return async function* (req, ctx) {
    const filter = taskFilter(req.filter);
    const heartbeatMs = heartbeatInterval(req);
    // Checked and taken in one step, with nothing awaited between: the count
    // of open streams is the slots in use, and every stream gives its back.
    refuseOverLimit(deps);
    // Counted until the call ends, whether or not this generator gets to its
    // finally (a client that vanished may leave it parked at a yield).
    let open = true;
    const release = () => {
      if (open) deps.gauges.activeStreams--;
      open = false;
    };
    deps.gauges.activeStreams++;
    ctx.signal.addEventListener("abort", release, { once: true });
    // connect-node may stop reading this generator before the call's signal
    // aborts: that stops the stream's work too.
    const stop = new AbortController();
    try {
      const frames = ctx.values.get(grpcFrameOutput);
      if (frames) {
        await serveStream({ deps, req, filter, heartbeatMs, signal: ctx.signal }, new FrameSink(frames, ctx.signal));
      } else {
        const signal = AbortSignal.any([ctx.signal, stop.signal]);
        const queue = new ResponseQueue(speaksJson(ctx) ? decodedResponse : encodedResponse, signal);
        yield* responses({ deps, req, filter, heartbeatMs, signal }, queue);
      }
    } finally {
      stop.abort();
      ctx.signal.removeEventListener("abort", release);
      release();
    }
  };
}

/** With --max-streams streams open, another fails at once with RESOURCE_EXHAUSTED, reason STREAM_LIMIT. */
function refuseOverLimit(deps: ServiceDeps): void {
  const limit = deps.settings.maxStreams;
  if (limit === 0 || deps.gauges.activeStreams < limit) return;
  deps.gauges.refusedStreams++;
  throw taskstreamError(
    Code.ResourceExhausted,
    "STREAM_LIMIT",
    `this server already serves ${limit} streams, its limit (--max-streams); retry later, with backoff, or on another replica`,
    { limit: String(limit) },
  );
}

interface Stream {
  deps: ServiceDeps;
  req: StreamTasksRequest;
  filter: EventFilter;
  heartbeatMs: number;
  signal: AbortSignal;
}

/** Where a stream's messages go. */
interface Sink {
  /**
   * Writes events from index `from` on, at least one write's worth, and more
   * while the transport takes them; returns the index of the first event not
   * written.
   */
  write(events: readonly StoredEvent[], from: number): number;
  /** Writes one message that is not an event (snapshot_complete, heartbeat). */
  message(response: MessageInitShape<typeof StreamTasksResponseSchema>): void;
  /** Whether the transport holds all it should: wait for `ready` before writing. */
  readonly full: boolean;
  /** Resolves once the transport takes more, or the call ended. */
  ready(): Promise<void>;
}

async function serveStream({ deps, req, filter, heartbeatMs, signal }: Stream, sink: Sink): Promise<void> {
  let position: number;
  if (req.afterSequence !== undefined) {
    position = await checkCursor(deps, req.afterSequence);
  } else {
    const snapshot = req.skipSnapshot ? { sequence: (await logBounds(deps.db.kysely)).last, entries: [] } : await runningSnapshotSizes(deps.db, filter);
    await sendSnapshot(deps, sink, snapshot, signal);
    sink.message({ message: { case: "snapshotComplete", value: { sequence: BigInt(snapshot.sequence) } } });
    position = snapshot.sequence;
  }
  let lastSent = Date.now();
  for (;;) {
    signal.throwIfAborted();
    if (sink.full) {
      await sink.ready();
      continue;
    }
    if (position < deps.tail.lastSequence) {
      const step = deps.tail.read(position, filter, STEP) ?? (await readFromLog(deps, position, filter));
      if (step.events.length > 0) {
        await sendAll(sink, step.events, signal);
        lastSent = Date.now();
      }
      position = step.through;
      continue;
    }
    if (lastSent + heartbeatMs <= Date.now()) {
      sink.message(heartbeat(position));
      lastSent = Date.now();
      continue;
    }
    ({ position, lastSent } = await followLive(deps.tail, { position, filter, lastSent, heartbeatMs }, sink, signal));
  }
}

/**
 * Sends the snapshot's events a page of READ_BYTES at a time, each page read
 * once the transport takes more: a stream never holds the whole snapshot.
 * Events are immutable, so a page read later is what the log held at S; only
 * retention can take one away (its task finished after S and expired), and
 * then the snapshot no longer holds: CURSOR_EXPIRED, start over.
 */
async function sendSnapshot(deps: ServiceDeps, sink: Sink, snapshot: { sequence: number; entries: EventSize[] }, signal: AbortSignal): Promise<void> {
  const { entries } = snapshot;
  for (let i = 0; i < entries.length; ) {
    if (sink.full) await sink.ready();
    signal.throwIfAborted();
    const end = pageEnd(entries, i);
    const page = await readPayloads(deps.db.kysely, entries.slice(i, end).map((e) => e.sequence));
    if (page.length < end - i) await checkCursor(deps, BigInt(snapshot.sequence));
    await sendAll(sink, page, signal);
    i = end;
  }
}

/** Where the page starting at `from` ends: at READ_BYTES of payloads, but at least one event. */
function pageEnd(sizes: readonly EventSize[], from: number): number {
  let end = from + 1;
  let bytes = sizes[from].size;
  while (end < sizes.length && bytes + sizes[end].size <= READ_BYTES) bytes += sizes[end++].size;
  return end;
}

/** Writes every event, waiting whenever the transport is full; the last write may leave it full. */
async function sendAll(sink: Sink, events: readonly StoredEvent[], signal: AbortSignal): Promise<void> {
  for (let i = 0; i < events.length; ) {
    if (sink.full) {
      await sink.ready();
      signal.throwIfAborted();
    }
    i = sink.write(events, i);
  }
}

/**
 * Follows the tail from `position` (caught up with it): the tail hands over
 * each batch's matching events as it reads them, and they are written at
 * once. Ends when the transport is full, when a heartbeat is due (nothing was
 * sent for heartbeatMs), or when the call ends; resolves with where the
 * stream's cursor is then, and when it last sent.
 */
function followLive(
  tail: EventTail,
  from: { position: number; filter: EventFilter; lastSent: number; heartbeatMs: number },
  sink: Sink,
  signal: AbortSignal,
): Promise<{ position: number; lastSent: number }> {
  return new Promise((resolve, reject) => {
    let lastSent = from.lastSent;
    let timer: NodeJS.Timeout | undefined;
    let unsubscribe = () => {};
    let stopped = false;
    // Every event up to the tail's head was offered, and what matched was
    // written; a stop mid-batch passes the position it reached.
    const stop = (position = Math.max(from.position, tail.lastSequence), error?: unknown) => {
      if (stopped) return;
      stopped = true;
      unsubscribe();
      clearTimeout(timer);
      signal.removeEventListener("abort", aborted);
      if (error) reject(error);
      else resolve({ position, lastSent });
    };
    const aborted = () => stop();
    const heartbeatDue = () => {
      const wait = lastSent + from.heartbeatMs - Date.now();
      if (wait <= 0) stop();
      else timer = setTimeout(heartbeatDue, wait);
    };
    signal.addEventListener("abort", aborted, { once: true });
    if (signal.aborted) return stop();
    unsubscribe = tail.subscribe(from.position, from.filter, (events) => {
      try {
        lastSent = Date.now();
        const written = sink.write(events, 0);
        if (written < events.length) stop(events[written - 1].sequence);
        else if (sink.full) stop();
      } catch (error) {
        stop(undefined, error);
      }
    });
    heartbeatDue();
  });
}

/**
 * A stream behind the tail's window catches up from the log, filtered in SQL,
 * a page of up to STEP events and READ_BYTES at a time (their sizes are read
 * first), unless retention deleted events it had not read: then its cursor
 * expired. That is checked after the read: retention deletes events and moves
 * the watermark in one transaction, so a watermark still at or below the
 * position once the page is read means the page lacks nothing.
 */
async function readFromLog(deps: ServiceDeps, position: number, filter: EventFilter): Promise<{ events: StoredEvent[]; through: number }> {
  const through = deps.tail.lastSequence;
  const sizes = await readEventSizes(deps.db, { after: position, through, filter, limit: STEP });
  const end = sizes.length === 0 ? 0 : pageEnd(sizes, 0);
  const last = end === sizes.length && sizes.length < STEP ? through : sizes[end - 1].sequence;
  const events = end === 0 ? [] : await readStoredEvents(deps.db.kysely, { after: position, through: sizes[end - 1].sequence, filter });
  await checkCursor(deps, BigInt(position));
  return { events, through: last };
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

function heartbeat(sequence: number): MessageInitShape<typeof StreamTasksResponseSchema> {
  return { message: { case: "heartbeat", value: { sequence: BigInt(sequence), serverTime: timestampFromMs(Date.now()) } } };
}

/**
 * The gRPC fast path's sink: events leave as frames written straight from
 * their stored bytes, up to CHUNK_BYTES per write. A batch the tail hands to
 * every unfiltered stream is framed once for all of them.
 */
class FrameSink implements Sink {
  constructor(
    private readonly out: GrpcFrameOutput,
    private readonly signal: AbortSignal,
  ) {}

  write(events: readonly StoredEvent[], from: number): number {
    let i = from;
    do {
      const end = chunkEnd(events, i);
      const written = this.out.write(framesOf(events, i, end));
      i = end;
      if (!written) break;
    } while (i < events.length);
    return i;
  }

  message(response: MessageInitShape<typeof StreamTasksResponseSchema>): void {
    this.out.write(frame(toBinary(StreamTasksResponseSchema, create(StreamTasksResponseSchema, response))));
  }

  get full(): boolean {
    return this.out.full;
  }

  ready(): Promise<void> {
    return this.out.drained(this.signal);
  }
}

/** Field 1 (event), length-delimited: the tag StreamTasksResponse.event starts with. */
const EVENT_TAG = 0x0a;

/** The size of an event's frame: prefix, tag, length, stored bytes. */
function frameSize(event: StoredEvent): number {
  const n = event.payload.length;
  return 6 + varintSize(n) + n;
}

/** Where the write starting at `from` ends: at CHUNK_BYTES, but at least one event. */
function chunkEnd(events: readonly StoredEvent[], from: number): number {
  let end = from + 1;
  let size = frameSize(events[from]);
  while (end < events.length && size + frameSize(events[end]) <= CHUNK_BYTES) size += frameSize(events[end++]);
  return end;
}

const sharedFrames = new WeakMap<readonly StoredEvent[], Buffer>();

/** The StreamTasksResponse frames of events [from, end), each an `event` field holding the stored bytes. */
function framesOf(events: readonly StoredEvent[], from: number, end: number): Buffer {
  const whole = from === 0 && end === events.length;
  const shared = whole ? sharedFrames.get(events) : undefined;
  if (shared) return shared;
  let size = 0;
  for (let i = from; i < end; i++) size += frameSize(events[i]);
  const out = Buffer.allocUnsafe(size);
  let pos = 0;
  for (let i = from; i < end; i++) {
    const payload = events[i].payload;
    const n = payload.length;
    out[pos] = 0;
    out.writeUInt32BE(1 + varintSize(n) + n, pos + 1);
    out[pos + 5] = EVENT_TAG;
    pos += 6;
    for (let v = n; ; v >>>= 7) {
      if (v < 0x80) {
        out[pos++] = v;
        break;
      }
      out[pos++] = (v & 0x7f) | 0x80;
    }
    out.set(payload, pos);
    pos += n;
  }
  if (whole) sharedFrames.set(events, out);
  return out;
}

function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n >>>= 7;
    size++;
  }
  return size;
}

/**
 * connect-node's sink: a short queue of responses that `responses` yields to
 * connect-node, which writes them one by one.
 */
class ResponseQueue implements Sink {
  /** Each queued response with the stored bytes of its event (0 for other messages). */
  private readonly items: { response: StreamTasksResponse; size: number }[] = [];
  /** The sum of the queued sizes. */
  private bytes = 0;
  private wakeReader?: () => void;
  private wakeWriter?: () => void;
  private closed = false;

  constructor(
    private readonly toResponse: (event: StoredEvent) => StreamTasksResponse,
    private readonly signal: AbortSignal,
  ) {}

  write(events: readonly StoredEvent[], from: number): number {
    let i = from;
    do this.push(this.toResponse(events[i]), events[i++].payload.length);
    while (i < events.length && !this.full);
    this.wake();
    return i;
  }

  message(response: MessageInitShape<typeof StreamTasksResponseSchema>): void {
    this.push(create(StreamTasksResponseSchema, response), 0);
    this.wake();
  }

  private push(response: StreamTasksResponse, size: number): void {
    this.items.push({ response, size });
    this.bytes += size;
  }

  /** Full at QUEUE_LIMIT responses or QUEUE_BYTES of events, so a slow reader's queue holds little. */
  get full(): boolean {
    return this.items.length >= QUEUE_LIMIT || this.bytes >= QUEUE_BYTES;
  }

  ready(): Promise<void> {
    if (!this.full || this.signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        this.signal.removeEventListener("abort", done);
        this.wakeWriter = undefined;
        resolve();
      };
      this.wakeWriter = done;
      this.signal.addEventListener("abort", done, { once: true });
    });
  }

  /** The next response, if one is queued. */
  take(): StreamTasksResponse | undefined {
    const item = this.items.shift();
    this.bytes -= item?.size ?? 0;
    if (!this.full) this.wakeWriter?.();
    return item?.response;
  }

  /** Resolves at the next write, or once the stream's work ended. */
  arrival(): Promise<void> {
    if (this.items.length > 0 || this.closed) return Promise.resolve();
    return new Promise((resolve) => (this.wakeReader = resolve));
  }

  close(): void {
    this.closed = true;
    this.wake();
  }

  private wake(): void {
    const wake = this.wakeReader;
    this.wakeReader = undefined;
    wake?.();
  }
}

/** Runs the stream into a queue, and yields what it queues; its failure ends the generator. */
async function* responses(stream: Stream, queue: ResponseQueue): AsyncGenerator<StreamTasksResponse> {
  let outcome: { failed: boolean; error?: unknown } | undefined;
  void serveStream(stream, queue)
    .then(
      () => (outcome = { failed: false }),
      (error: unknown) => (outcome = { failed: true, error }),
    )
    .finally(() => queue.close());
  for (;;) {
    const item = queue.take();
    if (item) {
      yield item;
    } else if (outcome) {
      if (outcome.failed) throw outcome.error;
      return;
    } else {
      await queue.arrival();
    }
  }
}

// One response per stored event, shared by every stream that sends it.
const encodedResponses = new WeakMap<StoredEvent, StreamTasksResponse>();
const decodedResponses = new WeakMap<StoredEvent, StreamTasksResponse>();

/**
 * For binary codecs: the response with the entry's stored bytes as `event`,
 * sent verbatim (encoded-response.ts): no stream encodes the event again.
 */
function encodedResponse(event: StoredEvent): StreamTasksResponse {
  let response = encodedResponses.get(event);
  if (!response) {
    response = withEncodedField(StreamTasksResponseSchema, {}, StreamTasksResponseSchema.field.event, [event.payload], rawBytes);
    encodedResponses.set(event, response);
  }
  return response;
}

/** For JSON codecs, which cannot carry raw bytes: the event decoded, once per entry. */
function decodedResponse(event: StoredEvent): StreamTasksResponse {
  let response = decodedResponses.get(event);
  if (!response) {
    response = create(StreamTasksResponseSchema, { message: { case: "event", value: fromBinary(TaskEventSchema, event.payload) } });
    decodedResponses.set(event, response);
  }
  return response;
}
