import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import type { Logger } from "../log.js";

// PostgreSQL's connection-exception and shutdown classes, and the socket
// errors of a database that is restarting or out of reach.
const UNAVAILABLE_CODES = new Set(["08000", "08001", "08003", "08004", "08006", "57P01", "57P02", "57P03", "ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "SQLITE_BUSY"]);
const UNAVAILABLE_MESSAGES = [/Connection terminated/i, /timeout exceeded when trying to connect/i, /Client has encountered a connection error/i];

/**
 * Turns what storage throws into a status a client can act on: the database
 * being out of reach is UNAVAILABLE (retry, or resume a stream), anything else
 * unexpected is INTERNAL and logged. taskstream's own errors pass through.
 */
export function storageErrors(logger: Logger): Interceptor {
  const convert = storageErrorConverter(logger);
  return (next) => async (req) => {
    try {
      const res = await next(req);
      if (!res.stream) return res;
      return { ...res, message: rethrowing(res.message, (err) => convert(err, req.method.name)) };
    } catch (err) {
      throw convert(err, req.method.name);
    }
  };
}

/** The status an error thrown by a handler answers with; see storageErrors. */
export function storageErrorConverter(logger: Logger): (err: unknown, procedure: string) => ConnectError {
  return (err, procedure) => {
    if (err instanceof ConnectError) return err;
    if (isUnavailable(err)) return new ConnectError(`storage unavailable: ${(err as Error).message}`, Code.Unavailable);
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

function isUnavailable(err: unknown): boolean {
  const { code, message } = (err ?? {}) as { code?: string; message?: string };
  return (code !== undefined && UNAVAILABLE_CODES.has(code)) || UNAVAILABLE_MESSAGES.some((re) => re.test(message ?? ""));
}
