/**
 * A gRPC server that does no work: it answers every call with the same
 * response bytes, framed (gzipped when the real server would gzip them) and
 * followed by OK trailers, from a process of its own. A client's latency
 * against it is that client's floor on this machine: what no server, however
 * fast, could take below.
 */
import { fork } from "node:child_process";
import http2 from "node:http2";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

export interface ReplayServer {
  url: string;
  stop(): void;
}

/** Starts the replay server in a child process, answering with `message` (gzipped as the server does, at level 1). */
export function startReplayServer(message: Uint8Array, gzip: boolean): Promise<ReplayServer> {
  const child = fork(fileURLToPath(import.meta.url), [], { execArgv: process.execArgv, stdio: ["ignore", "inherit", "inherit", "ipc"] });
  child.send({ message: Buffer.from(message).toString("base64"), gzip });
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`the replay server exited (${code}) before listening`)));
    child.once("message", (url) => resolve({ url: String(url), stop: () => child.kill() }));
  });
}

function serve(message: Buffer, gzip: boolean): void {
  const payload = gzip ? gzipSync(message, { level: 1 }) : message;
  const frame = Buffer.alloc(5 + payload.length);
  frame[0] = gzip ? 1 : 0;
  frame.writeUInt32BE(payload.length, 1);
  payload.copy(frame, 5);
  const headers = { ":status": 200, "content-type": "application/grpc+proto", ...(gzip ? { "grpc-encoding": "gzip" } : {}) };
  const server = http2.createServer();
  server.on("stream", (stream) => {
    stream.on("error", () => {});
    stream.on("data", () => {});
    stream.once("end", () => {
      stream.respond(headers, { waitForTrailers: true });
      stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(frame);
    });
  });
  server.listen(0, "127.0.0.1", () => {
    const address = server.address();
    process.send!(`http://127.0.0.1:${typeof address === "object" && address ? address.port : 0}`);
  });
  process.once("disconnect", () => process.exit(0));
}

// Run as the child (not when imported by the bench process, which is a forked child too).
if (process.send && process.argv[1] === fileURLToPath(import.meta.url)) {
  process.once("message", (m: { message: string; gzip: boolean }) => serve(Buffer.from(m.message, "base64"), m.gzip));
}
