import net from "node:net";

/**
 * How the proxy treats connections:
 * - forward: passes bytes both ways to the target (a healthy database);
 * - refuse: nothing listens on the port (a database that is down);
 * - blackhole: accepts connections and never answers (a partition, a firewall dropping packets);
 * - reject: answers a PostgreSQL startup with a FATAL ErrorResponse of `sqlstate` and hangs up,
 *   as a server out of connection slots (53300) or starting up (57P03) does.
 */
export type ProxyMode = { kind: "forward" } | { kind: "refuse" } | { kind: "blackhole" } | { kind: "reject"; sqlstate: string; message: string };

/** A TCP proxy in front of a PostgreSQL server (or any TCP server), to make it fail in the ways a network or a database does. */
export interface TcpProxy {
  port: number;
  /** Switches mode; every connection open so far is cut, as when a database restarts. */
  setMode(mode: ProxyMode): Promise<void>;
  /**
   * Stalled, forwarded connections stay open but pass no byte either way (new ones too), as when a
   * network drops packets for a while; unstalled, what waited is delivered. Cuts nothing.
   */
  setStalled(stalled: boolean): void;
  close(): Promise<void>;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  let mode: ProxyMode = { kind: "forward" };
  let stalled = false;
  const sockets = new Set<net.Socket>();
  /** Forwarded connections, each able to stop and start its bytes. */
  const links = new Set<{ flow(): void; hold(): void }>();
  const track = (socket: net.Socket) => {
    sockets.add(socket);
    socket.on("error", () => {});
    socket.once("close", () => sockets.delete(socket));
  };
  const server = net.createServer((client) => {
    track(client);
    if (mode.kind === "blackhole") return;
    if (mode.kind === "reject") return rejectStartup(client, mode);
    const upstream = net.connect(target.port, target.host);
    track(upstream);
    const link = {
      flow: () => client.pipe(upstream).pipe(client),
      hold: () => {
        client.unpipe(upstream).pause();
        upstream.unpipe(client).pause();
      },
    };
    links.add(link);
    if (!stalled) link.flow();
    const cut = () => {
      links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    client.once("close", cut);
    upstream.once("close", cut);
  });
  const listen = (port: number) => new Promise<void>((resolve, reject) => server.once("error", reject).listen(port, "127.0.0.1", () => resolve()));
  await listen(0);
  const port = (server.address() as net.AddressInfo).port;
  const cutAll = () => {
    for (const socket of sockets) socket.destroy();
  };
  return {
    port,
    async setMode(next) {
      cutAll();
      if (next.kind === "refuse" && server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
      if (next.kind !== "refuse" && !server.listening) await listen(port);
      mode = next;
    },
    setStalled(next) {
      if (next === stalled) return;
      stalled = next;
      for (const link of links) (stalled ? link.hold : link.flow)();
    },
    async close() {
      cutAll();
      if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Reads the client's startup packet (its length first) and answers with a FATAL ErrorResponse. */
function rejectStartup(socket: net.Socket, mode: { sqlstate: string; message: string }): void {
  let received = Buffer.alloc(0);
  socket.on("data", (chunk: Buffer) => {
    received = Buffer.concat([received, chunk]);
    if (received.length < 4 || received.length < received.readUInt32BE(0)) return;
    socket.end(errorResponse(mode.sqlstate, mode.message));
  });
}

/** A PostgreSQL ErrorResponse message: 'E', its length, then typed null-terminated fields. */
function errorResponse(sqlstate: string, message: string): Buffer {
  const fields = Buffer.concat([
    ...[`SFATAL`, `VFATAL`, `C${sqlstate}`, `M${message}`].map((field) => Buffer.from(`${field}\0`)),
    Buffer.from([0]),
  ]);
  const head = Buffer.alloc(5);
  head.write("E", 0);
  head.writeUInt32BE(fields.length + 4, 1);
  return Buffer.concat([head, fields]);
}
