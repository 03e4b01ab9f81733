/**
 * Seeds the database before the measured servers start (forked by main.ts, so
 * its memory never counts in a server's RSS): `tasks` RUNNING tasks, each with
 * the two events DispatchTask-with-claim writes (queued, then running).
 *
 * main.ts first dispatches one task with claim through the real server's RPC;
 * this clones that task's row and its two events, changing only identity and
 * args, so the seeded rows and events are what the server itself writes,
 * whatever columns the schema holds. The events are appended with the log's
 * own appendEvents (its sequences, its payload encoding), 1,000 tasks per
 * transaction: one DispatchTask transaction at a time takes over 1 ms on
 * SQLite here, which would make this a multi-minute set-up step.
 */
import { randomUUID } from "node:crypto";
import { clone, fromBinary } from "@bufbuild/protobuf";
import { sql } from "kysely";
import { TaskEventSchema, type TaskEvent } from "../../gen/taskstream/v1/task_pb.js";
import { openDatabase } from "../../src/storage/connect.js";
import { appendEvents, logBounds, type EventKind } from "../../src/storage/event-log.js";
import type { TaskRow } from "../../src/storage/schema.js";
import { recountTasks } from "../../src/storage/status-counts.js";

export interface SeedRequest {
  location: string;
  /** The task dispatched with claim through the RPC, to clone. */
  templateTaskId: string;
  tasks: number;
  /** Agents the tasks are spread over. */
  agents: number;
}

export interface SeedResult {
  seedMs: number;
  lastSequence: number;
}

const TASKS_PER_TRANSACTION = 1000;
/** Rows per INSERT: ~35 columns x 400 rows stays under SQLite's 32,766 bound parameters. */
const ROWS_PER_INSERT = 400;

export async function seed(request: SeedRequest, progress: (done: number) => void): Promise<SeedResult> {
  const db = openDatabase(request.location, { poolSize: 2 });
  try {
    if (db.dialect === "sqlite") {
      // The seeding connection only; the server opens its own with the usual settings.
      await sql`PRAGMA synchronous = OFF`.execute(db.kysely);
      // A big page cache keeps the random inserts into the tasks indexes in memory.
      await sql`PRAGMA cache_size = -1048576`.execute(db.kysely);
    }
    const template = await db.kysely.selectFrom("tasks").selectAll().where("task_id", "=", request.templateTaskId).executeTakeFirstOrThrow();
    const templateEvents = (
      await db.kysely.selectFrom("events").select("payload").where("task_id", "=", request.templateTaskId).orderBy("sequence").execute()
    ).map((row) => fromBinary(TaskEventSchema, row.payload));
    const kinds = templateEvents.map((e) => e.kind.case).join(",");
    if (kinds !== "queued,running") throw new Error(`the template task has events ${kinds}, not queued,running`);
    const [queued] = templateEvents;

    const started = performance.now();
    for (let done = 0; done < request.tasks; ) {
      const n = Math.min(TASKS_PER_TRANSACTION, request.tasks - done);
      const now = Date.now();
      await db.kysely.transaction().execute(async (trx) => {
        const rows: TaskRow[] = [];
        const entries: { task: TaskRow; kind: EventKind }[] = [];
        for (let k = 0; k < n; k++) {
          const i = done + k;
          const args = { query: `seeded task ${i}`, n: i };
          const row: TaskRow = {
            ...template,
            task_id: randomUUID(),
            request_id: null,
            tool_call_id: `seed-${i}`,
            agent_id: `seed-agent-${i % request.agents}`,
            run_id: `run-${i % 97}`,
            args: JSON.stringify(args),
            lease_id: randomUUID(),
          };
          // The queued event carries the task as it stood before the claim.
          entries.push({ task: { ...row, status: queued.status, attempt: queued.attempt }, kind: withArgs(templateEvents[0], args) });
          entries.push({ task: row, kind: withArgs(templateEvents[1], args) });
          rows.push(row);
        }
        const events = await appendEvents(trx, db.dialect, entries, now);
        rows.forEach((row, k) => (row.sequence = Number(events[2 * k + 1].sequence)));
        for (let k = 0; k < rows.length; k += ROWS_PER_INSERT) {
          await trx.insertInto("tasks").values(rows.slice(k, k + ROWS_PER_INSERT)).execute();
        }
      });
      done += n;
      if (done % 10_000 === 0 || done === request.tasks) progress(done);
    }
    // Rows went in without TaskStore, which keeps SQLite's task_counts.
    await recountTasks(db);
    const seedMs = performance.now() - started;
    if (db.dialect === "sqlite") await sql`PRAGMA wal_checkpoint(TRUNCATE)`.execute(db.kysely);
    else await sql`VACUUM ANALYZE`.execute(db.kysely);
    return { seedMs, lastSequence: (await logBounds(db.kysely)).last };
  } finally {
    await db.close();
  }
}

/** The template event's kind with other args. */
function withArgs(event: TaskEvent, args: { query: string; n: number }): EventKind {
  const kind = clone(TaskEventSchema, event).kind as EventKind;
  const value = kind.value as { args?: unknown } | undefined;
  if (value && "args" in value) value.args = args;
  return kind;
}

if (process.send) {
  process.once("message", (request: SeedRequest) => {
    const started = performance.now();
    const log = (done: number) =>
      process.stderr.write(`  seeded ${done.toLocaleString("en-US")} tasks in ${((performance.now() - started) / 1000).toFixed(1)} s\n`);
    seed(request, log).then(
      (result) => process.send!({ ok: true, result }, () => process.exit(0)),
      (err: unknown) => process.send!({ ok: false, error: String((err as Error)?.stack ?? err) }, () => process.exit(1)),
    );
  });
}
