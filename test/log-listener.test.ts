import { readFileSync } from "node:fs";
import { createClient } from "@connectrpc/connect";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/health/v1/health_pb.js";
import { loadSettings } from "../src/config.js";
import { LogSignal } from "../src/fanout/log-signal.js";
import { PgLogListener } from "../src/fanout/pg-log-listener.js";
import { createLogger } from "../src/log.js";
import { startServer } from "../src/server/server.js";
import { migrateToLatest } from "../src/storage/migrate.js";
import { openDatabase } from "../src/storage/connect.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { freshDatabase, withClients, type TestServer } from "./support/test-server.js";

// The PostgreSQL LISTEN connection connects like the pool: a connect attempt
// into a database that accepts TCP and never answers fails after the connect
// timeout and is retried (health NOT_SERVING meanwhile) instead of hanging,
// and the connection has TCP keepalive on.

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function eventually(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** A fresh database reached through a proxy of its own, so the proxy sees only this test's connections. */
async function proxiedDatabase() {
  const database = await freshDatabase("postgres");
  const url = new URL(database.location);
  const proxy = await startTcpProxy({ host: url.hostname, port: Number(url.port) });
  url.port = String(proxy.port);
  return { url: url.toString(), proxy, name: url.pathname.slice(1), adminUrl: database.location.replace(/\/[^/]+$/, "/postgres"), drop: () => database.drop() };
}

/** Whether a session on the database has run the listener's last step of connecting, reading the log head. */
async function listenerUp(adminUrl: string, name: string): Promise<boolean> {
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    const { rows } = await admin.query("SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'SELECT last_sequence FROM log_head%'", [name]);
    return rows.length > 0;
  } finally {
    await admin.end();
  }
}

describe("the PostgreSQL LISTEN connection", () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  it("turns TCP keepalive on, first probe after 30 s", async () => {
    const { url, proxy, drop } = await proxiedDatabase();
    cleanups.push(drop, () => proxy.close());
    const db = openDatabase(url);
    await migrateToLatest(db);
    await db.close();

    const ups: boolean[] = [];
    const listener = new PgLogListener(url, { log: new LogSignal(), pending: new LogSignal() }, { onConnection: (up) => ups.push(up) }, createLogger("error", () => {}));
    listener.start();
    cleanups.push(() => listener.close());
    await eventually(() => ups.includes(true), 10_000, "the listener to connect");

    // /proc/net/tcp: the timer column ("tr:when") is 02 while a keepalive
    // timer is armed, with when in 1/100 s. The listener's is the one
    // established socket to the proxy's port.
    const ours = readFileSync("/proc/net/tcp", "utf8")
      .split("\n")
      .slice(1)
      .map((line) => line.trim().split(/\s+/))
      .filter((f) => f.length > 5 && parseInt(f[2].split(":")[1], 16) === proxy.port && f[3] === "01");
    expect(ours).toHaveLength(1);
    expect(ours[0][5]).toMatch(/^02:/);
    expect(parseInt(ours[0][5].split(":")[1], 16)).toBeLessThanOrEqual(3000);
  });

  describe("of a real server, when the database accepts connections and never answers", () => {
    let t: TestServer | undefined;
    let proxy: TcpProxy;
    afterEach(async () => {
      await t?.close();
      t = undefined;
    });

    it("fails each connect attempt within --database-connect-timeout-ms and keeps retrying, NOT_SERVING meanwhile", async () => {
      const database = await proxiedDatabase();
      proxy = database.proxy;
      const warnings: { at: number; msg: string; error?: string; backoffMs?: number }[] = [];
      const logger = createLogger("warn", (line) => warnings.push({ ...JSON.parse(line), at: Date.now() }));
      const settings = loadSettings([], {}, { host: "127.0.0.1", port: 0, database: database.url, databaseConnectTimeoutMs: 500, shutdownGraceMs: 2000 });
      const server = await startServer(settings, logger);
      t = withClients(server, database.url, async () => {
        await server.close();
        await proxy.close();
        await database.drop();
      });
      const health = createClient(Health, t.transport("grpc"));
      const status = async () => (await health.check({ service: "" })).status;
      expect(await status()).toBe(ServingStatus.SERVING);
      // Health starts SERVING: wait until the listener has connected, listened and read the log head.
      await eventually(() => listenerUp(database.adminUrl, database.name), 10_000, "the LISTEN connection");

      // Cuts the LISTEN connection; every reconnect then meets silence.
      await proxy.setMode({ kind: "blackhole" });
      await eventually(async () => (await status()) === ServingStatus.NOT_SERVING, 5_000, "NOT_SERVING");

      const lost = () => warnings.filter((w) => w.msg === "lost the database's LISTEN connection");
      const attempts = () => warnings.filter((w) => w.msg === "cannot LISTEN on the database; retrying");
      // Backoff 100, 200, 400, 800 ms before attempts of 500 ms each: the
      // fourth failure comes about 3.5 s after the cut. Without a connect
      // timeout the first attempt would hang for good.
      await eventually(() => attempts().length >= 4, 8_000, "four failed connect attempts");
      expect(await status()).toBe(ServingStatus.NOT_SERVING);
      expect(lost()).toHaveLength(1);
      // Each attempt fails by its timeout, after the backoff before it (with some slack for a busy machine).
      let previous = { at: lost()[0].at, backoffMs: 100 };
      for (const [i, attempt] of attempts().slice(0, 4).entries()) {
        expect(attempt.error, `attempt ${i + 1}`).toMatch(/timeout/i);
        expect(attempt.at - previous.at, `attempt ${i + 1}`).toBeGreaterThanOrEqual(previous.backoffMs + 450);
        expect(attempt.at - previous.at, `attempt ${i + 1}`).toBeLessThan(previous.backoffMs + 500 + 750);
        previous = { at: attempt.at, backoffMs: attempt.backoffMs! };
      }

      await proxy.setMode({ kind: "forward" });
      await eventually(async () => (await status()) === ServingStatus.SERVING, 10_000, "SERVING again");
      const { task } = await t.tasks().dispatchTask({ toolName: "after" });
      expect(task!.toolName).toBe("after");
    });
  });
});
