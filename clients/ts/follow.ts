/**
 * A StreamTasks follower for TypeScript, in Node.js (connect-node, gRPC or
 * Connect) and in browsers (connect-web): the generated client does the
 * calls, this resumes them, as the Go and Python clients' followers do.
 * It uses no Node.js API, so a dashboard bundles it as it is.
 */
import { clone, create, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { errorReason } from "../../src/errors.js";
import {
  StreamTasksRequestSchema,
  type StreamTasksRequest,
  type StreamTasksResponse,
  type TaskService,
} from "../../gen/taskstream/v1/task_service_pb.js";

/** One message of the stream, or the follower's notice that it starts over. */
export interface FollowMessage {
  /** The server's message (event, snapshotComplete or heartbeat); absent when `restart` is set. */
  response?: StreamTasksResponse;
  /**
   * An event of the snapshot: a task running as of the snapshot's sequence,
   * not a change. Snapshot events come in no particular order; snapshotComplete ends them.
   */
  snapshot: boolean;
  /**
   * Why the follower starts over without a cursor: a snapshot that broke off
   * before snapshotComplete, or CURSOR_EXPIRED. A fresh snapshot follows
   * (unless the request skips it): whatever was built before is stale.
   */
  restart?: ConnectError;
}

export interface FollowOptions {
  /** Ends the follower: the call in flight is aborted and the iteration returns. */
  signal?: AbortSignal;
  /** Whether to resume after an error; `retryable` by default. */
  retry?: (error: ConnectError) => boolean;
  /** The wait before resuming doubles after each failed call, from min to max; 100 ms and 5 s by default. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** Told each error the follower resumes after, and the wait. */
  onRetry?: (error: ConnectError, waitMs: number) => void;
}

const DEFAULT_HEARTBEAT_MS = 15_000;

/**
 * Reads StreamTasks and, after a disconnect, calls again from the last
 * sequence handled, following README's rules for resuming:
 *
 * - Its cursor is the sequence of the last event, snapshotComplete or
 *   heartbeat handed out whose consumer asked for the next message. The
 *   snapshot's events do not move it.
 * - After an error `retry` accepts, it waits (backoff with jitter) and calls
 *   again with afterSequence = cursor: the server replays every matching
 *   event after it, then goes live, with no gap and no repeat.
 * - Without a cursor yet (the stream broke before snapshotComplete), it calls
 *   again as the first time, and the snapshot starts over.
 * - A cursor older than the log still holds (FAILED_PRECONDITION,
 *   CURSOR_EXPIRED) cannot be resumed: it drops the cursor and takes a fresh
 *   snapshot (or, with skipSnapshot, goes live from the log's end).
 * - The server sends something at least every heartbeat interval (15 s unless
 *   the request asks otherwise). A call silent for twice that plus 5 s is
 *   taken as dead (a connection gone without a word, which a browser's fetch
 *   cannot ping) and resumed.
 */
export class TaskFollower {
  private readonly request: StreamTasksRequest;
  private position?: bigint;

  constructor(
    private readonly client: Client<typeof TaskService>,
    request: MessageInitShape<typeof StreamTasksRequestSchema>,
    private readonly options: FollowOptions = {},
  ) {
    this.request = create(StreamTasksRequestSchema, request);
    this.position = this.request.afterSequence;
  }

  /** The sequence to resume after, or undefined before the first snapshotComplete. */
  get cursor(): bigint | undefined {
    return this.position;
  }

  /**
   * Every message, across as many calls as it takes, until the signal aborts
   * (it returns) or an error `retry` refuses (thrown; the cursor stays valid).
   */
  async *messages(): AsyncGenerator<FollowMessage> {
    const { signal, onRetry } = this.options;
    const retry = this.options.retry ?? retryable;
    const minWait = Math.max(this.options.minBackoffMs ?? 100, 1);
    const maxWait = Math.max(this.options.maxBackoffMs ?? 5000, minWait);
    let wait = minWait;
    while (!signal?.aborted) {
      let delivered = false;
      let error: ConnectError;
      try {
        for await (const message of this.oneCall()) {
          delivered = true;
          yield message;
        }
        // The server does not end a stream unprompted: resume as after any disconnect.
        error = new ConnectError("StreamTasks ended", Code.Unavailable);
      } catch (err) {
        error = ConnectError.from(err);
      }
      if (signal?.aborted) return;
      if (delivered) wait = minWait;
      if (errorReason(error) === "CURSOR_EXPIRED" && this.position !== undefined) {
        this.position = undefined;
        yield { snapshot: false, restart: error };
        continue;
      }
      if (!retry(error)) throw error;
      // The snapshot broke off: the next call sends it again from the start.
      if (this.position === undefined && delivered) yield { snapshot: false, restart: error };
      const sleep = jitter(wait);
      onRetry?.(error, sleep);
      await delay(sleep, signal);
      wait = Math.min(2 * wait, maxWait);
    }
  }

  /** One StreamTasks call, ended early when it falls silent or the signal aborts. */
  private async *oneCall(): AsyncGenerator<FollowMessage> {
    const request = clone(StreamTasksRequestSchema, this.request);
    request.afterSequence = this.position;
    // With a cursor no snapshot is sent; without one, every event before
    // snapshotComplete is the snapshot's.
    let inSnapshot = this.position === undefined;
    const call = new AbortController();
    const stop = () => call.abort();
    this.options.signal?.addEventListener("abort", stop);
    const silence = silenceLimitMs(request);
    // One timer per call, not one per message: a replay can bring thousands a
    // second. Time the consumer spends on a message is not the call's silence.
    let heard = Date.now();
    let consuming = false;
    const watchdog = setInterval(() => !consuming && Date.now() - heard > silence && stop(), Math.min(1000, silence / 4));
    try {
      for await (const response of this.client.streamTasks(request, { signal: call.signal })) {
        consuming = true;
        const m = response.message;
        const sequence = m.case === undefined ? undefined : m.value.sequence;
        const moves = m.case === "snapshotComplete" || !inSnapshot;
        yield { response, snapshot: inSnapshot && m.case === "event" };
        // The consumer asked for the next message: this one is handled.
        if (m.case === "snapshotComplete") inSnapshot = false;
        if (moves && sequence !== undefined && (this.position === undefined || sequence > this.position)) this.position = sequence;
        consuming = false;
        heard = Date.now();
      }
    } catch (err) {
      // A call this follower gave up on for its silence fails as UNAVAILABLE, and is resumed.
      if (call.signal.aborted && !this.options.signal?.aborted) throw new ConnectError(`StreamTasks sent nothing for ${silence} ms`, Code.Unavailable);
      throw err;
    } finally {
      clearInterval(watchdog);
      call.abort();
      this.options.signal?.removeEventListener("abort", stop);
    }
  }
}

function silenceLimitMs(request: StreamTasksRequest): number {
  const interval = request.heartbeatInterval;
  const ms = interval ? Number(interval.seconds) * 1000 + interval.nanos / 1e6 : 0;
  return 2 * (ms || DEFAULT_HEARTBEAT_MS) + 5000;
}

/** Full jitter over [wait/2, wait], so that clients cut off together do not all come back at once. */
export function jitter(wait: number): number {
  return wait / 2 + Math.random() * (wait / 2);
}

/** Resolves after `ms`, or at once when `signal` aborts (or has). */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    if (signal?.aborted) return done();
    signal?.addEventListener("abort", done);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}

/**
 * Whether a StreamTasks call that failed with `error` is worth making again
 * from the cursor: UNAVAILABLE (server shutdown, storage out of reach, a lost
 * connection), the codes a broken connection or stream shows as (UNKNOWN,
 * INTERNAL, ABORTED, CANCELED), and DEADLINE_EXCEEDED.
 */
export function retryable(error: ConnectError): boolean {
  return [Code.Unavailable, Code.Unknown, Code.Internal, Code.Aborted, Code.Canceled, Code.DeadlineExceeded].includes(error.code);
}

/** The oldest cursor the server still holds, from a CURSOR_EXPIRED error (its reason: `errorReason` in src/errors.ts). */
export function oldestSequence(error: unknown): bigint | undefined {
  const info = ConnectError.from(error).findDetails(ErrorInfoSchema)[0];
  const oldest = info?.reason === "CURSOR_EXPIRED" ? info.metadata.oldest_sequence : undefined;
  return oldest === undefined ? undefined : BigInt(oldest);
}
