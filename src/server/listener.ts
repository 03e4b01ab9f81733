import { readFileSync } from "node:fs";
import http from "node:http";
import http2 from "node:http2";
import net from "node:net";
import type { Duplex } from "node:stream";

export type Handler = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => void;

/** One listening port for both protocols, closable with a grace period. */
export interface Listener {
  port: number;
  /** Refuses new connections, lets open requests finish for graceMs, then cuts what is left. */
  close(graceMs: number): Promise<void>;
}

export interface ListenOptions {
  host: string;
  port: number;
  tls?: { certFile: string; keyFile: string };
}

// Every HTTP/2 connection opens with this preface; HTTP/1.1 never does.
const H2_PREFACE = Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/**
 * What one HTTP/2 connection may hold in Node's session buffers, in MB. gRPC
 * clients send every call over one connection, and at Node's default (10)
 * three requests of a few MiB in flight made the server refuse the
 * connection's other calls (RESOURCE_EXHAUSTED, ENHANCE_YOUR_CALM). 64 holds
 * a dozen messages of the 4 MiB limit at once, and still bounds a connection.
 */
const SESSION_MEMORY_MB = 64;

/**
 * Listens on one port for gRPC (HTTP/2) and for browsers and curl (HTTP/1.1).
 * With TLS, ALPN picks the protocol. Without it, Node's HTTP/2 server would
 * refuse HTTP/1.1, so the first bytes of each connection choose the server.
 */
export async function listen(handler: Handler, options: ListenOptions): Promise<Listener> {
  const h2 = options.tls
    ? http2.createSecureServer(
        { cert: readFileSync(options.tls.certFile), key: readFileSync(options.tls.keyFile), allowHTTP1: true, maxSessionMemory: SESSION_MEMORY_MB },
        handler,
      )
    : http2.createServer({ maxSessionMemory: SESSION_MEMORY_MB }, handler);
  const h1 = http.createServer(handler as http.RequestListener);
  // h1 gets its sockets from `route`, never from listen(); this starts the
  // connection tracking closeIdleConnections() and request timeouts rely on.
  h1.emit("listening");
  const sessions = new Set<http2.ServerHttp2Session>();
  const sockets = new Set<Duplex>();
  h2.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  const front = options.tls ? h2 : net.createServer((socket) => route(socket, h1, h2));
  front.on("connection", (socket: net.Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    front.once("error", reject);
    front.listen(options.port, options.host, () => resolve());
  });
  return {
    port: (front.address() as net.AddressInfo).port,
    close: (graceMs) => closeGracefully({ front, h1, sessions, sockets }, graceMs),
  };
}

/** Hands a cleartext connection to the HTTP/2 or HTTP/1.1 server by its first bytes. */
function route(socket: net.Socket, h1: http.Server, h2: http2.Http2Server): void {
  let head = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    head = Buffer.concat([head, chunk]);
    const prefix = Math.min(head.length, H2_PREFACE.length);
    const couldBeH2 = head.subarray(0, prefix).equals(H2_PREFACE.subarray(0, prefix));
    if (couldBeH2 && head.length < H2_PREFACE.length) return;
    socket.off("data", onData);
    socket.pause();
    socket.unshift(head);
    // The HTTP/2 session drains what was unshifted and then reads the socket
    // natively; resuming the JS stream would steal its bytes.
    (couldBeH2 ? h2 : h1).emit("connection", socket);
    if (!couldBeH2) socket.resume();
  };
  socket.on("data", onData);
  socket.on("error", () => socket.destroy());
}

async function closeGracefully(
  parts: { front: net.Server; h1: http.Server; sessions: Set<http2.ServerHttp2Session>; sockets: Set<Duplex> },
  graceMs: number,
): Promise<void> {
  const closed = new Promise<void>((resolve) => parts.front.close(() => resolve()));
  parts.h1.close();
  // GOAWAY: open streams finish, new ones go elsewhere.
  for (const session of parts.sessions) session.close();
  parts.h1.closeIdleConnections();
  parts.h1.on("request", (_req, res) => res.setHeader("connection", "close"));
  const timer = setTimeout(() => {
    for (const session of parts.sessions) session.destroy();
    for (const socket of parts.sockets) socket.destroy();
  }, graceMs);
  const drained = setInterval(() => parts.h1.closeIdleConnections(), 50);
  await closed;
  clearTimeout(timer);
  clearInterval(drained);
}
