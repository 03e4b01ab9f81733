import type http2 from "node:http2";
import { promisify } from "node:util";
import { gunzip, gzip, gzipSync } from "node:zlib";
import { create, fromBinary, isMessage, toBinary, type DescMessage, type DescMethodServerStreaming, type DescMethodUnary, type DescService, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, createContextKey, createContextValues, type ContextValues, type HandlerContext } from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import type { Handler } from "./listener.js";
import { taskstreamError } from "../errors.js";
import { withProtocolReason } from "./protocol-errors.js";

const GRPC_PROTO = /^application\/grpc(\+proto)?$/;
const gzipAsync = promisify(gzip);
const gunzipAsync = promisify(gunzip);

/** Why a finished call's signal is aborted. */
const CALL_ENDED = new ConnectError("the call ended", Code.Canceled);

/**
 * Answers up to this size are gzipped on the event loop. Level 1 takes
 * ~0.2 ms for a 32 KiB page of tasks; sending it to libuv's thread pool and
 * back cost more than that in latency on a busy 2-core machine (a ListTasks
 * page's server time fell from 7.3 to 2.9 ms with gzip off, measured with the
 * async way). Larger answers still go to the pool, so the loop never stalls long.
 */
const GZIP_ON_LOOP_MAX_BYTES = 64 * 1024;
/**
 * How much of a request over the size limit is read and dropped before the
 * server stops reading it. A client answered while it still sends keeps its
 * unsent bytes queued on a stream that never ends, and a Node client
 * (grpc-js) counts them against its connection's memory for good: after one
 * 5 MiB request refused that way, its next few large calls on the
 * connection failed RESOURCE_EXHAUSTED ("Bandwidth exhausted"). Read to its
 * end, the refusal costs the client nothing. Past this bound the client
 * gets the same answer, and its stream stays open until it cancels it.
 */
const DRAIN_MAX_BYTES = 16 * 1024 * 1024;

export function gzipAnswer(message: Uint8Array): Promise<Uint8Array> | Uint8Array {
  return message.length <= GZIP_ON_LOOP_MAX_BYTES ? gzipSync(message, { level: 1 }) : gzipAsync(message, { level: 1 });
}

export interface GrpcFastPathOptions {
  maxMessageBytes: number;
  /** Unary responses this large or larger are gzipped for clients that accept it. */
  compressMinBytes: number;
  shutdownSignal: AbortSignal;
  /** What any other call's interceptors make of an error: a status to answer with. */
  toConnectError(error: unknown, procedure: string): ConnectError;
}

/**
 * The response side of a server-streaming call served here, for a handler
 * that writes whole gRPC frames itself (many per write) rather than yielding
 * one message at a time. What it yields is still written, in order.
 */
export interface GrpcFrameOutput {
  /** Writes length-prefixed messages; false once the stream's buffer is full. */
  write(frames: Uint8Array): boolean;
  /** Whether the last write filled the buffer and no drain has followed yet. */
  readonly full: boolean;
  /** Resolves once the buffer drained, or the stream closed, or the signal aborted. */
  drained(signal: AbortSignal): Promise<void>;
}

/** Set in the handler context of streaming calls on the fast path. */
export const grpcFrameOutput = createContextKey<GrpcFrameOutput | undefined>(undefined, { description: "gRPC frame output" });

type AnyMethod = DescMethodUnary | DescMethodServerStreaming;
type UnaryHandler = (request: unknown, ctx: HandlerContext) => Promise<unknown> | unknown;
type StreamHandler = (request: unknown, ctx: HandlerContext) => AsyncIterable<unknown>;

/** A method served here, with its implementation. */
interface Route {
  service: DescService;
  method: AnyMethod;
  impl: UnaryHandler | StreamHandler;
}

/**
 * Serves the gRPC (binary) calls of taskstream's own services by reading and
 * writing HTTP/2 frames itself, and hands every other request to `next`
 * (connect-node: Connect, gRPC-Web, JSON, health, reflection, metrics).
 *
 * The handlers are the very ones connect-node runs; only the framing
 * differs. On this machine connect-node spent ~650 µs of CPU on an empty
 * unary gRPC call against ~60 µs for bare node:http2
 * (bench/lifecycle/rpc-floor.ts), and passed every streamed message through
 * several async iterables, written and awaited alone. Here a call is its
 * request frame decoded, the handler, and its answer written with its
 * trailers. A streaming handler may write frames itself through
 * `grpcFrameOutput` (StreamTasks writes each page of events as one buffer of
 * frames, straight from their stored bytes). Unary answers are gzipped as
 * connect-node would (at level 1); streamed ones are not.
 */
export function withGrpcFastPath(next: Handler, services: [DescService, object][], options: GrpcFastPathOptions): Handler {
  const routes = new Map<string, Route>();
  for (const [service, impl] of services) {
    for (const method of service.methods) {
      const fn = (impl as Record<string, unknown>)[method.localName];
      if (typeof fn !== "function" || (method.methodKind !== "unary" && method.methodKind !== "server_streaming")) continue;
      routes.set(`/${service.typeName}/${method.name}`, { service, method: method as AnyMethod, impl: fn.bind(impl) as UnaryHandler });
    }
  }
  // The calls in progress, aborted together at shutdown: one listener on the
  // shutdown signal rather than one added and removed per call.
  const calls = new Set<CallContext>();
  options.shutdownSignal.addEventListener("abort", () => {
    for (const call of calls) call.abort(options.shutdownSignal.reason);
  }, { once: true });
  return (req, res) => {
    const route = routes.get(req.url ?? "");
    const contentType = req.headers["content-type"] ?? "";
    if (!route || req.httpVersionMajor !== 2 || req.method !== "POST" || !GRPC_PROTO.test(contentType)) return next(req, res);
    void serve(req as http2.Http2ServerRequest, res as http2.Http2ServerResponse, contentType, route, options, calls);
  };
}

/**
 * A call's HandlerContext, as connect's createHandlerContext makes it (the
 * signal aborts at the deadline, when the client goes, at shutdown and when
 * the call ends), for less: one AbortController rather than three with
 * listeners linking them, and the Headers objects made only when read.
 * Profiled under bench/list-tasks, making and ending connect's took ~0.12 ms
 * of each call; with it, reading the body with listeners and a shared OK
 * trailer below, a GetTask's server CPU fell from 0.79 to 0.58 ms (median of
 * 8 interleaved rounds of 3000 calls against the old code).
 */
class CallContext implements HandlerContext {
  readonly requestMethod = "POST";
  readonly protocolName = "grpc";
  readonly signal: AbortSignal;
  private readonly controller = new AbortController();
  private readonly deadline: number | undefined;
  private readonly timer: NodeJS.Timeout | undefined;
  private header: Headers | undefined;
  private outHeader: Headers | undefined;
  private outTrailer: Headers | undefined;

  constructor(
    readonly service: DescService,
    readonly method: AnyMethod,
    readonly url: string,
    private readonly rawHeader: http2.IncomingHttpHeaders,
    timeoutMs: number | undefined,
    readonly values: ContextValues,
  ) {
    this.signal = this.controller.signal;
    if (timeoutMs === undefined) return;
    this.deadline = Date.now() + timeoutMs;
    const expire = () => this.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded));
    if (timeoutMs <= 0) expire();
    else this.timer = setTimeout(expire, timeoutMs);
  }

  readonly timeoutMs = (): number | undefined => (this.deadline === undefined ? undefined : this.deadline - Date.now());

  /** The request's headers but HTTP/2 pseudo-headers, as connect-node gives them. */
  get requestHeader(): Headers {
    if (!this.header) {
      this.header = new Headers();
      for (const [name, value] of Object.entries(this.rawHeader)) {
        if (typeof value === "string" && !name.startsWith(":")) this.header.append(name, value);
      }
    }
    return this.header;
  }

  get responseHeader(): Headers {
    return (this.outHeader ??= new Headers());
  }

  get responseTrailer(): Headers {
    return (this.outTrailer ??= new Headers());
  }

  /** Aborts the signal (the first reason stands) and stops the deadline's timer. */
  abort(reason: unknown): void {
    clearTimeout(this.timer);
    if (!this.signal.aborted) this.controller.abort(reason);
  }
}

/** The trailers of a call that succeeded. */
const OK_TRAILERS = Object.fromEntries(setTrailerStatus(new Headers(), undefined).entries());

async function serve(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  contentType: string,
  route: Route,
  options: GrpcFastPathOptions,
  calls: Set<CallContext>,
): Promise<void> {
  const stream = req.stream;
  const timeout = parseTimeout(String(req.headers["grpc-timeout"] ?? "") || null, Number.MAX_SAFE_INTEGER);
  const writer = new FrameWriter(stream);
  const values = createContextValues();
  if (route.method.methodKind === "server_streaming") values.set(grpcFrameOutput, writer);
  const ctx = new CallContext(route.service, route.method, req.url, req.headers, timeout.timeoutMs, values);
  if (options.shutdownSignal.aborted) ctx.abort(options.shutdownSignal.reason);
  else calls.add(ctx);
  let ended = false;
  // Every stream closes: only one that closes before its call ended means the client went away.
  stream.once("close", () => ended || ctx.abort(new ConnectError("the client closed the stream", Code.Canceled)));
  stream.on("error", () => {});
  // Node's compatibility response owns the stream's headers and trailers.
  const headers = { "content-type": contentType, "grpc-accept-encoding": "gzip" };
  let failure: ConnectError | undefined;
  try {
    if (timeout.error) throw withProtocolReason(timeout.error) ?? timeout.error;
    const request = await readRequest(req, route.method, options.maxMessageBytes);
    if (route.method.methodKind === "unary") {
      const message = messageBytes(route.method, await (route.impl as UnaryHandler)(request, ctx));
      if (message.length > options.maxMessageBytes) {
        throw messageTooLarge("response", options.maxMessageBytes);
      }
      // Like connect-node: gzip what is worth it, for a client that accepts it.
      const gzip = message.length >= options.compressMinBytes && /\bgzip\b/.test(String(req.headers["grpc-accept-encoding"] ?? ""));
      if (!stream.closed) res.writeHead(200, gzip ? { ...headers, "grpc-encoding": "gzip" } : headers);
      // Level 1: half the time of the default level on a list page, for ~8% more bytes.
      await writer.send(gzip ? frame(await gzipAnswer(message), true) : frame(message), ctx.signal);
    } else {
      res.writeHead(200, headers);
      for await (const response of (route.impl as StreamHandler)(request, ctx)) {
        await writer.send(frame(messageBytes(route.method, response)), ctx.signal);
      }
    }
  } catch (error) {
    failure = options.toConnectError(ctx.signal.aborted ? (ctx.signal.reason ?? error) : error, route.method.name);
  } finally {
    ended = true;
    calls.delete(ctx);
    // Releases the call's timer. A shared reason: an error made per call (a
    // stack captured each time) cost ~40 us of every unary call.
    ctx.abort(CALL_ENDED);
  }
  if (stream.destroyed || stream.closed) return;
  if (!res.headersSent) res.writeHead(200, headers);
  res.addTrailers(failure ? Object.fromEntries(setTrailerStatus(new Headers(), failure).entries()) : OK_TRAILERS);
  res.end();
}

/**
 * The request's body, read with listeners: an async iterator over the request
 * (for await) cost ~40 us of each call. A body over the size limit is
 * dropped as it arrives and refused at its end, or once past DRAIN_MAX_BYTES.
 */
function readBody(req: http2.Http2ServerRequest, maxBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxBytes + 5) return void chunks.push(chunk);
      chunks.length = 0;
      if (size <= DRAIN_MAX_BYTES) return;
      done();
      req.destroy();
      reject(messageTooLarge("request", maxBytes));
    };
    const onEnd = () => {
      done();
      if (size > maxBytes + 5) reject(messageTooLarge("request", maxBytes));
      else resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
    };
    const onError = (error: Error) => {
      done();
      reject(error);
    };
    const onClose = () => {
      done();
      reject(new ConnectError("the client closed the stream", Code.Canceled));
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("close", onClose);
  });
}

/** RESOURCE_EXHAUSTED, reason MESSAGE_TOO_LARGE: a request or response over the message limit. */
function messageTooLarge(what: "request" | "response", limit: number): ConnectError {
  return taskstreamError(Code.ResourceExhausted, "MESSAGE_TOO_LARGE", `${what} message larger than ${limit} bytes`, { limit: String(limit) });
}

/** A request that is not one well-formed message (the code as the gRPC spec gives it), reason MALFORMED_MESSAGE. */
function malformed(code: Code, message: string): ConnectError {
  return taskstreamError(code, "MALFORMED_MESSAGE", message);
}

/** The call's one request message: a 5-byte prefix, then the message, gzipped if flagged. */
async function readRequest(req: http2.Http2ServerRequest, method: AnyMethod, maxBytes: number) {
  const body = await readBody(req, maxBytes);
  if (body.length < 5 || body.length !== 5 + body.readUInt32BE(1)) {
    throw malformed(Code.InvalidArgument, "protocol error: expected exactly one request message");
  }
  let message: Uint8Array = body.subarray(5);
  if (body[0] & 1) {
    // As the gRPC spec says: a compressed message with no encoding is INTERNAL, one we do not speak UNIMPLEMENTED.
    const encoding = req.headers["grpc-encoding"] ?? "identity";
    if (encoding === "identity") throw malformed(Code.Internal, "protocol error: compressed message without grpc-encoding");
    if (encoding !== "gzip") {
      throw taskstreamError(Code.Unimplemented, "UNSUPPORTED_ENCODING", `unsupported grpc-encoding "${encoding}"; this server speaks gzip`, { encoding: String(encoding) });
    }
    message = await gunzipAsync(message, { maxOutputLength: maxBytes }).catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ERR_BUFFER_TOO_LARGE") throw messageTooLarge("request", maxBytes);
      throw malformed(Code.Internal, `protocol error: cannot gunzip the request: ${error.message}`);
    });
  }
  try {
    return fromBinary(method.input, message);
  } catch (error) {
    throw malformed(Code.InvalidArgument, `parse binary: ${(error as Error).message}`);
  }
}

function messageBytes(method: AnyMethod, response: unknown): Uint8Array {
  const message = isMessage(response, method.output) ? response : create(method.output, response as MessageInitShape<DescMessage>);
  return toBinary(method.output, message);
}

/** A gRPC length-prefixed message. */
export function frame(bytes: Uint8Array, compressed = false): Buffer {
  const framed = Buffer.allocUnsafe(5 + bytes.length);
  framed[0] = compressed ? 1 : 0;
  framed.writeUInt32BE(bytes.length, 1);
  framed.set(bytes, 5);
  return framed;
}

/**
 * Writes frames to an HTTP/2 stream, and waits for a drain only when the
 * stream's buffer is full (the client reads slower than we send).
 */
class FrameWriter implements GrpcFrameOutput {
  constructor(private readonly stream: http2.ServerHttp2Stream) {}

  write(frames: Uint8Array): boolean {
    return this.stream.write(frames);
  }

  /** A closed stream never drains: it counts as not full, and the call's signal ends the handler. */
  get full(): boolean {
    return this.stream.writableNeedDrain && !this.stream.destroyed && !this.stream.closed;
  }

  /**
   * Writes, then waits while the buffer is full; throws if the call ended
   * while it waited. A write that fit stands even if the call is ending: a
   * long-poll's answer at shutdown must still be sent.
   */
  async send(frames: Uint8Array, signal: AbortSignal): Promise<void> {
    if (this.write(frames)) return;
    await this.drained(signal);
    signal.throwIfAborted();
  }

  drained(signal: AbortSignal): Promise<void> {
    if (!this.full || signal.aborted) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        this.stream.off("drain", done);
        this.stream.off("close", done);
        signal.removeEventListener("abort", done);
        resolve();
      };
      this.stream.once("drain", done);
      this.stream.once("close", done);
      signal.addEventListener("abort", done, { once: true });
    });
  }
}
