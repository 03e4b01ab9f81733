import { createRequire } from "node:module";
import { Worker } from "node:worker_threads";

/**
 * Copies a SQLite WAL back into the database file from a worker thread.
 *
 * SQLite otherwise checkpoints inside whichever commit crosses
 * `wal_autocheckpoint`, and a checkpoint fsyncs: that commit, and the event
 * loop with it, waits for the disk. A PASSIVE checkpoint on a second
 * connection runs beside the writer instead (WAL allows one checkpointer
 * next to readers and a writer), so commits only append to the WAL.
 * Durability is unchanged: the same pages reach the same fsyncs.
 *
 * The worker is plain CommonJS, evaluated from a string, so it runs the same
 * under tsx and under plain Node; it is unref'd and never holds the process open.
 */
export class SqliteCheckpointer {
  private readonly worker: Worker;

  constructor(path: string, intervalMs = 200) {
    const sqliteModule = createRequire(import.meta.url).resolve("better-sqlite3");
    this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { path, intervalMs, sqliteModule } });
    this.worker.unref();
    // A failed checkpoint is retried on the next tick; one that cannot run at
    // all leaves SQLite's own autocheckpoint in charge, as before.
    this.worker.on("error", () => {});
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}

const WORKER_SOURCE = `
const { workerData } = require("node:worker_threads");
const Database = require(workerData.sqliteModule);
const db = new Database(workerData.path);
db.pragma("busy_timeout = 1000");
setInterval(() => {
  try { db.pragma("wal_checkpoint(PASSIVE)"); } catch {}
}, workerData.intervalMs);
`;
