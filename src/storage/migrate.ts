import { Migrator, type Migration, type MigrationProvider } from "kysely";
import type { Db } from "./connect.js";
import * as initial from "./migrations/2026-11-24T0720-initial.js";
import * as execution from "./migrations/2026-11-24T0810-execution.js";
import * as taskCounts from "./migrations/2026-11-24T1110-task-counts.js";
import * as filterStatusIndexes from "./migrations/2026-11-24T1140-filter-status-indexes.js";
import * as sqliteCountsByWriters from "./migrations/2026-11-24T1500-sqlite-counts-by-writers.js";
import * as sqliteHourCounts from "./migrations/2026-11-24T1510-sqlite-hour-counts.js";
import * as sqliteEventsRowid from "./migrations/2026-11-24T2200-sqlite-events-rowid.js";
import * as partialExecutionIndexes from "./migrations/2026-11-24T2230-partial-execution-indexes.js";

/** Brings the schema up to date; safe to run at every start, by every replica. */
export async function migrateToLatest(db: Db): Promise<void> {
  const { error, results } = await migrator(db).migrateToLatest();
  const failed = results?.find((r) => r.status === "Error");
  if (error || failed) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(failed ? `migration ${failed.migrationName}: ${message}` : message, { cause: error });
  }
}

/** Taskstream's migrations on `db` (tests take a database to an older schema with it). */
export function migrator(db: Db): Migrator {
  return new Migrator({ db: db.kysely, provider: provider(db) });
}

function provider(db: Db): MigrationProvider {
  const migrations: Record<string, Migration> = {
    // Applied in name order: an ISO date and time prefix keeps it the order written.
    "2026-11-24T0720-initial": { up: (k) => initial.up(k, db.dialect) },
    "2026-11-24T0810-execution": { up: (k) => execution.up(k) },
    "2026-11-24T1110-task-counts": { up: (k) => taskCounts.up(k, db.dialect) },
    "2026-11-24T1140-filter-status-indexes": { up: (k) => filterStatusIndexes.up(k, db.dialect) },
    "2026-11-24T1500-sqlite-counts-by-writers": { up: (k) => sqliteCountsByWriters.up(k, db.dialect) },
    "2026-11-24T1510-sqlite-hour-counts": { up: (k) => sqliteHourCounts.up(k, db.dialect) },
    "2026-11-24T2200-sqlite-events-rowid": { up: (k) => sqliteEventsRowid.up(k, db.dialect) },
    "2026-11-24T2230-partial-execution-indexes": { up: (k) => partialExecutionIndexes.up(k, db.dialect) },
  };
  return { getMigrations: async () => migrations };
}
