import { brotliDecompressSync, gunzipSync } from "node:zlib";
import { Code, ConnectError } from "@connectrpc/connect";
import { createAsyncIterable, encodeEnvelope, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import { codeToHttpStatus, endStreamFlag, endStreamFromJson, endStreamToJson, errorFromJsonBytes, errorToJsonBytes } from "@connectrpc/connect/protocol-connect";
import { findTrailerError, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { trailerFlag, trailerParse, trailerSerialize } from "@connectrpc/connect/protocol-grpc-web";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { errorInfo, type ErrorReason } from "../errors.js";

/**
 * The error a protocol fault should be, for one connect raised without an
 * ErrorInfo (a body that does not parse, too large, in an unknown
 * compression; a bad timeout header), or undefined for any other error.
 * Undecodable binary, which connect reports as INTERNAL, is INVALID_ARGUMENT
 * as on the gRPC fast path; every other code stays connect's.
 */
export function withProtocolReason(error: ConnectError): ConnectError | undefined {
  if (error.findDetails(ErrorInfoSchema).length > 0) return undefined;
  const message = error.rawMessage;
  const as = (code: Code, reason: ErrorReason, metadata: Record<string, string> = {}) =>
    new ConnectError(message, code, error.metadata, [errorInfo(reason, metadata)], error);
  if (message.startsWith("parse binary:")) return as(Code.InvalidArgument, "MALFORMED_MESSAGE");
  switch (error.code) {
    case Code.ResourceExhausted:
      return as(error.code, "MESSAGE_TOO_LARGE");
    case Code.InvalidArgument: {
      const header = timeoutHeader(message);
      return header ? as(error.code, "INVALID_HEADER", { header }) : as(error.code, "MALFORMED_MESSAGE");
    }
    case Code.Unimplemented:
      if (message.startsWith("unknown compression")) return as(error.code, "UNSUPPORTED_ENCODING");
      return message.startsWith("protocol error:") ? as(error.code, "MALFORMED_MESSAGE") : undefined;
    case Code.Internal:
      return message.includes("compressed envelope") ? as(error.code, "MALFORMED_MESSAGE") : undefined;
    default:
      return undefined;
  }
}

/** The timeout header connect could not read, by its message; undefined for any other fault. */
function timeoutHeader(message: string): string | undefined {
  const match = /^protocol error: invalid (connect|grpc) timeout value/.exec(message);
  if (match) return match[1] === "grpc" ? "grpc-timeout" : "connect-timeout-ms";
  return undefined;
}

/**
 * A response of connect-node's with any error it carries given its reason
 * (see withProtocolReason), in the protocol's own place for errors: a
 * Connect unary body, a Connect stream's end message, a gRPC-Web trailer
 * frame, or gRPC trailers. A success passes through chunk by chunk.
 */
export async function withProtocolReasons(res: UniversalServerResponse): Promise<UniversalServerResponse> {
  const contentType = res.header?.get("content-type") ?? "";
  const body = res.body;
  if (!body) return res;
  if (contentType.startsWith("application/json")) return res.status === 200 ? res : unaryError(res, body);
  if (contentType.startsWith("application/connect+")) {
    return { ...res, body: mapEndFrame(body, endStreamFlag, res.header?.get("connect-content-encoding"), fixEndStream) };
  }
  if (contentType.startsWith("application/grpc-web")) {
    return { ...res, body: mapEndFrame(body, trailerFlag, res.header?.get("grpc-encoding"), fixTrailerFrame) };
  }
  const trailer = res.trailer;
  if (contentType.startsWith("application/grpc") && trailer) return { ...res, body: beforeEnd(body, () => fixTrailers(trailer)) };
  return res;
}

/** A Connect unary error: its small JSON body read whole and rewritten, with the status it implies. */
async function unaryError(res: UniversalServerResponse, body: AsyncIterable<Uint8Array>): Promise<UniversalServerResponse> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of body) chunks.push(chunk);
  const original = Buffer.concat(chunks);
  const header = new Headers(res.header);
  const json = decompress(original, header.get("content-encoding"));
  const fixed = json && withProtocolReason(errorFromJsonBytes(json, undefined, new ConnectError("", Code.Unknown)));
  if (!fixed) return { ...res, body: createAsyncIterable([original]) };
  const bytes = errorToJsonBytes(fixed, {});
  header.delete("content-encoding");
  header.set("content-length", String(bytes.length));
  return { ...res, status: codeToHttpStatus(fixed.code), header, body: createAsyncIterable([bytes]) };
}

/** A Connect stream's end message, rewritten if its error has no reason. */
function fixEndStream(data: Uint8Array): Uint8Array | undefined {
  const end = endStreamFromJson(data);
  const fixed = end.error && withProtocolReason(end.error);
  return fixed && new TextEncoder().encode(JSON.stringify(endStreamToJson(end.metadata, fixed, {})));
}

/** A gRPC-Web trailer frame's headers, rewritten if its error has no reason. */
function fixTrailerFrame(data: Uint8Array): Uint8Array | undefined {
  const trailer = trailerParse(data);
  return fixTrailers(trailer) ? trailerSerialize(trailer) : undefined;
}

/** Sets gRPC trailers' status to the error's with its reason; whether it changed them. */
function fixTrailers(trailer: Headers): boolean {
  const error = findTrailerError(trailer);
  const fixed = error && withProtocolReason(error);
  if (!fixed) return false;
  setTrailerStatus(trailer, fixed);
  return true;
}

/**
 * The body with its end frame (the chunk that is one whole envelope flagged
 * `flag`: connect writes each envelope as a chunk) rewritten by `fix`, sent
 * uncompressed. The iterator's throw and return reach the handler's, as
 * the adapter uses them to end the call.
 */
function mapEndFrame(
  body: AsyncIterable<Uint8Array>,
  flag: number,
  encoding: string | null | undefined,
  fix: (data: Uint8Array) => Uint8Array | undefined,
): AsyncIterable<Uint8Array> {
  return mapIterator(body, (chunk) => {
    if (chunk.length < 5 || !(chunk[0] & flag) || Buffer.from(chunk.buffer, chunk.byteOffset, 5).readUInt32BE(1) !== chunk.length - 5) return chunk;
    const data = chunk[0] & 1 ? decompress(chunk.subarray(5), encoding ?? null) : chunk.subarray(5);
    const fixed = data && fix(data);
    return fixed ? encodeEnvelope(flag, fixed) : chunk;
  });
}

/** The body, with `last` run once it is done (gRPC trailers are read after the body). */
function beforeEnd(body: AsyncIterable<Uint8Array>, last: () => void): AsyncIterable<Uint8Array> {
  return mapIterator(body, (chunk) => chunk, last);
}

function mapIterator(body: AsyncIterable<Uint8Array>, map: (chunk: Uint8Array) => Uint8Array, done?: () => void): AsyncIterable<Uint8Array> {
  return {
    [Symbol.asyncIterator]() {
      const it = body[Symbol.asyncIterator]();
      return {
        async next() {
          const result = await it.next();
          if (result.done) done?.();
          return result.done ? result : { done: false, value: map(result.value) };
        },
        throw: it.throw && ((error?: unknown) => it.throw!(error)),
        return: it.return && ((value?: unknown) => it.return!(value)),
      };
    },
  };
}

/** The bytes, decompressed as `encoding` says; undefined if they do not decompress. */
function decompress(bytes: Uint8Array, encoding: string | null): Uint8Array | undefined {
  try {
    if (!encoding || encoding === "identity") return bytes;
    if (encoding === "gzip") return gunzipSync(bytes);
    if (encoding === "br") return brotliDecompressSync(bytes);
  } catch {
    // Not ours to repair: the response passes as it is.
  }
  return undefined;
}
