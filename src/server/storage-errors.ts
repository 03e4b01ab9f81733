import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { taskstreamError } from "../errors.js";
import { CONFLICT_CODES } from "../storage/group-commit.js";
import type { Logger } from "../log.js";

// Failures that pass when the database is back, so a client should retry:
const UNAVAILABLE_CODES = new Set([
  // PostgreSQL: connection exceptions (class 08), out of connection slots,
  // and the server shutting down, crashed or still starting (class 57P).
  ...["08000", "08001", "08003", "08004", "08006", "53300", "57P01", "57P02", "57P03"],
  // Node's socket and DNS errors: a database restarting or out of reach.
  ...["ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"],
  // SQLite: another process held the write lock past busy_timeout.
  "SQLITE_BUSY",
]);
// node-postgres reports these with a message only: no free connection in
// time ("timeout exceeded when trying to connect"), or a connection that
// ended or failed while in use.
const UNAVAILABLE_MESSAGES = [/Connection terminated/i, /timeout exceeded when trying to connect/i, /Client has encountered a connection error/i];

/**
 * Turns what storage throws into a status a client can act on: the database
 * being out of reach is UNAVAILABLE (retry, or resume a stream), anything else
 * unexpected is INTERNAL and logged. taskstream's own errors pass through.
 */
export function storageErrors(logger: Logger): Interceptor {
  const convert = storageErrorConverter(logger);
  // What a handler throws once its call was aborted is the abort's doing, not
  // a fault: the deadline's or the shutdown's error stands, and a client that
  // went away (connect-node aborts with a bare AbortError) ends it CANCELED.
  const settle = (err: unknown, req: { signal: AbortSignal; method: { name: string } }) => {
    if (!req.signal.aborted || err instanceof ConnectError) return convert(err, req.method.name);
    const reason: unknown = req.signal.reason;
    return reason instanceof ConnectError ? reason : new ConnectError("the client closed the call", Code.Canceled);
  };
  return (next) => async (req) => {
    try {
      const res = await next(req);
      if (!res.stream) return res;
      return { ...res, message: rethrowing(res.message, (err) => settle(err, req)) };
    } catch (err) {
      throw settle(err, req);
    }
  };
}

/** The status an error thrown by a handler answers with; see storageErrors. */
export function storageErrorConverter(logger: Logger): (err: unknown, procedure: string) => ConnectError {
  return (err, procedure) => {
    if (err instanceof ConnectError) return err;
    const cause = unavailableCause(err);
    if (cause) return storageUnavailable(cause);
    const code = (err as { code?: unknown })?.code;
    if (typeof code === "string" && CONFLICT_CODES.has(code)) {
      // Still in conflict after the writer's own tries: the call may be retried as a whole.
      return taskstreamError(Code.Aborted, "STORAGE_CONFLICT", "the change conflicted with concurrent changes; retry it", { code });
    }
    logger.error("unexpected error", { procedure, error: String(err), stack: (err as Error)?.stack });
    return new ConnectError("internal error", Code.Internal);
  };
}

async function* rethrowing<T>(messages: AsyncIterable<T>, convert: (err: unknown) => ConnectError): AsyncIterable<T> {
  try {
    yield* messages;
  } catch (err) {
    throw convert(err);
  }
}

/**
 * The error, or the one it wraps, that says storage is out of reach, if any.
 * node-postgres wraps connect failures in `cause`, and Node reports a failed
 * connect to every address of a host name as an AggregateError.
 */
export function unavailableCause(err: unknown, depth = 0): { code?: string; message?: string } | undefined {
  if (typeof err !== "object" || err === null || depth > 5) return undefined;
  const { code, message, cause, errors } = err as { code?: unknown; message?: unknown; cause?: unknown; errors?: unknown };
  if (typeof code === "string" && UNAVAILABLE_CODES.has(code)) return { code, message: String(message) };
  if (typeof message === "string" && UNAVAILABLE_MESSAGES.some((re) => re.test(message))) return { message };
  for (const inner of [cause, ...(Array.isArray(errors) ? errors : [])]) {
    const found = unavailableCause(inner, depth + 1);
    if (found) return found;
  }
  return undefined;
}

/**
 * UNAVAILABLE with reason STORAGE_UNAVAILABLE, and the driver's code (a
 * SQLSTATE or a Node error code) when there is one, so clients and logs can
 * tell an outage from a refusal without parsing the message.
 */
function storageUnavailable(cause: { code?: string; message?: string }): ConnectError {
  const metadata: Record<string, string> = cause.code ? { code: cause.code } : {};
  return taskstreamError(Code.Unavailable, "STORAGE_UNAVAILABLE", `storage unavailable: ${cause.message ?? cause.code}`, metadata);
}
