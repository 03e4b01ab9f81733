import { readFileSync } from "node:fs";
import { Code } from "@connectrpc/connect";
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { SETTINGS, loadSettings, type Settings } from "../src/config.js";
import { expectError } from "./support/expect-error.js";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.js";
import { freshDatabase, startWith, withClients, type TestServer } from "./support/test-server.js";

// The PostgreSQL pool: its size is a setting, a database that does not answer
// fails calls UNAVAILABLE after the connect timeout instead of hanging them,
// and its connections have TCP keepalive on. (SQLite has no pool.)

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("database pool settings", () => {
  it("reads the pool size and connect timeout from flags and environment, with defaults 10 and 5000 ms", () => {
    expect(SETTINGS.databasePoolSize.default).toBe("10");
    expect(SETTINGS.databaseConnectTimeoutMs.default).toBe("5000");
    expect(loadSettings([], {})).toMatchObject({ databasePoolSize: 10, databaseConnectTimeoutMs: 5000 });
    expect(loadSettings(["--database-pool-size", "3", "--database-connect-timeout-ms", "750"], {})).toMatchObject({
      databasePoolSize: 3,
      databaseConnectTimeoutMs: 750,
    });
    const env = { TASKSTREAM_DATABASE_POOL_SIZE: "25", TASKSTREAM_DATABASE_CONNECT_TIMEOUT_MS: "2000" };
    expect(loadSettings([], env)).toMatchObject({ databasePoolSize: 25, databaseConnectTimeoutMs: 2000 });
    expect(() => loadSettings(["--database-pool-size", "0"], {})).toThrow("--database-pool-size / TASKSTREAM_DATABASE_POOL_SIZE");
    expect(() => loadSettings(["--database-connect-timeout-ms", "0"], {})).toThrow("--database-connect-timeout-ms");
  });
});

describe("the PostgreSQL pool of a real server", () => {
  let t: TestServer | undefined;
  let proxy: TcpProxy;
  afterEach(async () => {
    await t?.close();
    t = undefined;
  });

  /** A server on a fresh database, reached through a proxy of its own so its connections can be told apart. */
  async function start(overrides: Partial<Settings>) {
    const database = await freshDatabase("postgres");
    const url = new URL(database.location);
    proxy = await startTcpProxy({ host: url.hostname, port: Number(url.port) });
    url.port = String(proxy.port);
    const server = await startWith(url.toString(), overrides);
    const name = url.pathname.slice(1);
    t = withClients(server, url.toString(), async () => {
      await server.close();
      await proxy.close();
      await database.drop();
    });
    return { t, name, adminUrl: database.location.replace(/\/[^/]+$/, "/postgres") };
  }

  /** Enough concurrent calls to use every connection a pool may open. */
  async function burst(server: TestServer) {
    await Promise.all(
      Array.from({ length: 40 }, (_, i) => (i % 2 ? server.tasks().dispatchTask({ toolName: "burst" }) : server.tasks().listTasks({ pageSize: 5 }))),
    );
  }

  async function connectionsTo(adminUrl: string, name: string): Promise<number> {
    const admin = new pg.Client({ connectionString: adminUrl });
    await admin.connect();
    try {
      const { rows } = await admin.query<{ n: string }>("SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1", [name]);
      return Number(rows[0].n);
    } finally {
      await admin.end();
    }
  }

  it("opens no more connections than --database-pool-size, plus one to LISTEN", async () => {
    const small = await start({ databasePoolSize: 2 });
    await burst(small.t);
    expect(await connectionsTo(small.adminUrl, small.name)).toBeLessThanOrEqual(3);
    await small.t.close();

    // The same burst with the default pool uses more: the limit above is the setting's doing.
    const usual = await start({});
    await burst(usual.t);
    expect(await connectionsTo(usual.adminUrl, usual.name)).toBeGreaterThan(3);
  });

  it("fails calls UNAVAILABLE after the connect timeout when the database does not answer, instead of hanging", async () => {
    const { t } = await start({ databaseConnectTimeoutMs: 1000 });
    await t.tasks().dispatchTask({ toolName: "before" });
    // Packets dropped: connections open, nothing ever answers.
    await proxy.setMode({ kind: "blackhole" });
    await sleep(200);
    const started = Date.now();
    // The client's own deadline only bounds the test, should the server hang.
    await expectError(t.tasks().dispatchTask({ toolName: "during" }, { timeoutMs: 10_000 }), Code.Unavailable, "STORAGE_UNAVAILABLE");
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    expect(Date.now() - started).toBeLessThan(5000);

    await proxy.setMode({ kind: "forward" });
    await sleep(200);
    const { task } = await t.tasks().dispatchTask({ toolName: "after" });
    expect(task!.toolName).toBe("after");
  });

  it("turns TCP keepalive on for pool connections, first probe after 30 s", async () => {
    const { t } = await start({ databasePoolSize: 4 });
    await burst(t);
    // /proc/net/tcp: the timer column ("tr:when") is 02 while a keepalive
    // timer is armed, with when in 1/100 s. Sockets to the proxy's port are
    // this server's: its pool, and its LISTEN connection.
    const ours = readFileSync("/proc/net/tcp", "utf8")
      .split("\n")
      .slice(1)
      .map((line) => line.trim().split(/\s+/))
      .filter((f) => f.length > 5 && parseInt(f[2].split(":")[1], 16) === proxy.port && f[3] === "01");
    const keepalive = ours.filter((f) => f[5].startsWith("02:"));
    expect(keepalive.length).toBeGreaterThanOrEqual(2);
    for (const f of keepalive) expect(parseInt(f[5].split(":")[1], 16)).toBeLessThanOrEqual(3000);
  });
});
