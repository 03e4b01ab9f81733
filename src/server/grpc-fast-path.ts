import type http2 from "node:http2";
import { gunzipSync } from "node:zlib";
import { create, fromBinary, isMessage, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createHandlerContext } from "@connectrpc/connect";
import { parseTimeout, setTrailerStatus } from "@connectrpc/connect/protocol-grpc";
import { StreamTasksRequestSchema, StreamTasksResponseSchema, TaskService } from "../../gen/taskstream/v1/task_service_pb.js";
import type { ServiceDeps } from "../service/deps.js";
import { streamTasks } from "../service/stream-tasks.js";
import type { Handler } from "./listener.js";

const METHOD = TaskService.method.streamTasks;
const PATH = `/${TaskService.typeName}/${METHOD.name}`;
const GRPC_PROTO = /^application\/grpc(\+proto)?$/;

export interface GrpcStreamOptions {
  maxMessageBytes: number;
  shutdownSignal: AbortSignal;
  /** What any other call's interceptors make of an error: a status to answer with. */
  toConnectError(error: unknown, procedure: string): ConnectError;
}

/**
 * Serves StreamTasks over gRPC (binary) by writing frames to the HTTP/2
 * stream itself, and hands every other request to `next` (connect-node).
 *
 * The handler is the same generator connect-node runs; only the framing
 * differs. Each event's frame (the stored event bytes behind a 5-byte gRPC
 * prefix) is built once and written as is to every stream that sends it, and
 * the frames of one turn of the event loop leave in one write. Through
 * connect-node each message instead passes several async iterables and is
 * written, and awaited, on its own: most of what a delivery cost. gRPC-Web
 * and Connect streams, which need other framing, still go through connect-node.
 */
export function withGrpcStreamTasks(next: Handler, deps: ServiceDeps, options: GrpcStreamOptions): Handler {
  const impl = streamTasks(deps);
  return (req, res) => {
    const contentType = req.headers["content-type"] ?? "";
    if (req.httpVersionMajor !== 2 || req.method !== "POST" || req.url !== PATH || !GRPC_PROTO.test(contentType)) {
      return next(req, res);
    }
    void serve(req as http2.Http2ServerRequest, res as http2.Http2ServerResponse, contentType, impl, options);
  };
}

async function serve(
  req: http2.Http2ServerRequest,
  res: http2.Http2ServerResponse,
  contentType: string,
  impl: ReturnType<typeof streamTasks>,
  options: GrpcStreamOptions,
): Promise<void> {
  const stream = req.stream;
  const clientGone = new AbortController();
  stream.once("close", () => clientGone.abort(new ConnectError("the client closed the stream", Code.Canceled)));
  stream.on("error", () => {});
  const timeout = parseTimeout(String(req.headers["grpc-timeout"] ?? "") || null, Number.MAX_SAFE_INTEGER);
  const ctx = createHandlerContext({
    service: TaskService,
    method: METHOD,
    protocolName: "grpc",
    requestMethod: "POST",
    url: req.url,
    timeoutMs: timeout.timeoutMs,
    shutdownSignal: options.shutdownSignal,
    requestSignal: clientGone.signal,
    requestHeader: Object.entries(req.headers).filter((h): h is [string, string] => typeof h[1] === "string" && !h[0].startsWith(":")),
  });
  // Through Node's compatibility response, which owns the stream's headers and trailers.
  res.writeHead(200, { "content-type": contentType, "grpc-accept-encoding": "gzip" });
  const writer = new FrameWriter(stream);
  let failure: ConnectError | undefined;
  try {
    if (timeout.error) throw timeout.error;
    const request = await readRequest(req, options.maxMessageBytes);
    for await (const response of impl(request, ctx)) {
      await writer.write(frameOf(response), ctx.signal);
    }
  } catch (error) {
    failure = options.toConnectError(ctx.signal.aborted ? (ctx.signal.reason ?? error) : error, METHOD.name);
  } finally {
    ctx.abort();
  }
  if (stream.destroyed || stream.closed) return;
  res.addTrailers(Object.fromEntries(setTrailerStatus(new Headers(), failure).entries()));
  writer.end(res);
}

/** The one request message of a server stream: a 5-byte prefix, then the message, gzipped if flagged. */
async function readRequest(req: http2.Http2ServerRequest, maxBytes: number) {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBytes + 5) throw new ConnectError(`request message larger than ${maxBytes} bytes`, Code.ResourceExhausted);
    chunks.push(chunk);
  }
  const body = Buffer.concat(chunks);
  if (body.length < 5 || body.length !== 5 + body.readUInt32BE(1)) {
    throw new ConnectError("protocol error: expected exactly one request message", Code.InvalidArgument);
  }
  let message: Uint8Array = body.subarray(5);
  if (body[0] & 1) {
    const encoding = req.headers["grpc-encoding"];
    if (encoding !== "gzip") throw new ConnectError(`unsupported grpc-encoding "${encoding ?? "identity"}"`, Code.Unimplemented);
    message = gunzipSync(message, { maxOutputLength: maxBytes });
  }
  try {
    return fromBinary(StreamTasksRequestSchema, message);
  } catch (error) {
    throw new ConnectError(`parse binary: ${(error as Error).message}`, Code.InvalidArgument);
  }
}

// Event responses are shared by every stream that sends them (stream-tasks.ts),
// so their frames are too.
const frames = new WeakMap<object, Buffer>();

function frameOf(response: Parameters<typeof create<typeof StreamTasksResponseSchema>>[1]): Buffer {
  const key = response as object;
  let frame = frames.get(key);
  if (!frame) {
    const message = isMessage(response, StreamTasksResponseSchema) ? response : create(StreamTasksResponseSchema, response);
    const bytes = toBinary(StreamTasksResponseSchema, message);
    frame = Buffer.allocUnsafe(5 + bytes.length);
    frame[0] = 0;
    frame.writeUInt32BE(bytes.length, 1);
    frame.set(bytes, 5);
    frames.set(key, frame);
  }
  return frame;
}

/**
 * Writes frames to an HTTP/2 stream, corked for the rest of the event loop's
 * turn so the frames written in it go out together, and waits for a drain
 * only when the stream's buffer is full (the client reads slower than we send).
 */
class FrameWriter {
  private corked = false;

  constructor(private readonly stream: http2.ServerHttp2Stream) {}

  async write(frame: Buffer, signal: AbortSignal): Promise<void> {
    if (!this.corked) {
      this.corked = true;
      this.stream.cork();
      setImmediate(() => this.uncork());
    }
    if (this.stream.write(frame)) return;
    this.uncork();
    await new Promise<void>((resolve) => {
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
    signal.throwIfAborted();
  }

  end(res: http2.Http2ServerResponse): void {
    this.uncork();
    res.end();
  }

  private uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.stream.uncork();
  }
}
