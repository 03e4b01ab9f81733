/**
 * Where a task's storage time goes, statement by statement, without RPC:
 * runs the same TaskStore the server runs (dispatch -> claim -> complete) in
 * this process, over a Kysely whose `log` hook times every query, and groups
 * the time by SQL text. On SQLite it then measures what a prepared-statement
 * cache and a narrower task-row UPDATE would save.
 *
 *   npx tsx bench/lifecycle/statements.ts [--tasks 20000] [--dialect sqlite|postgres] [--many] [--json out.json]
 */
import BetterSqlite3 from "better-sqlite3";
import { create } from "@bufbuild/protobuf";
import { ValueSchema } from "@bufbuild/protobuf/wkt";
import type { LogEvent } from "kysely";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startEmbeddedPostgres } from "../../test/support/postgres-global.js";
import { LogSignal } from "../../src/fanout/log-signal.js";
import { openDatabase } from "../../src/storage/connect.js";
import { migrateToLatest } from "../../src/storage/migrate.js";
import { TaskStore, type NewTask } from "../../src/storage/task-store.js";

const { values: flags } = parseArgs({
  options: {
    tasks: { type: "string", default: "20000" },
    dialect: { type: "string", default: "sqlite" },
    batch: { type: "string", default: "100" },
    sequential: { type: "boolean", default: false },
    // Each round through the batch methods (dispatchMany, completeMany), as DispatchTasks and CompleteTasks call them.
    many: { type: "boolean", default: false },
    json: { type: "string" },
  },
  strict: true,
});
const TASKS = Number(flags.tasks);
const BATCH = Number(flags.batch);
const dialect = flags.dialect === "postgres" ? "postgres" : "sqlite";

export interface StatementRow {
  sql: string;
  calls: number;
  perTask: number;
  totalMs: number;
  usPerCall: number;
  share: number;
}

interface Timing {
  calls: number;
  ms: number;
  /** One SQL text of this shape, as sent. */
  example: string;
}

const timings = new Map<string, Timing>();
let logging = false;
const log = (event: LogEvent) => {
  if (!logging || event.level !== "query") return;
  const key = normalize(event.query.sql);
  const t = timings.get(key) ?? { calls: 0, ms: 0, example: event.query.sql };
  t.calls++;
  t.ms += event.queryDurationMillis;
  timings.set(key, t);
};

/** One label per statement shape: parameter lists collapsed, long column lists cut. */
function normalize(sql: string): string {
  return sql
    .replace(/\$\d+/g, "?")
    .replace(/\((\s*\?\s*,)+\s*\?\s*\)/g, "(?…)")
    .replace(/(\(\?…\)\s*,\s*)+\(\?…\)/g, "(?…), …")
    .replace(/set ("[a-z_]+" = \?, ){3,}/, (m) => `set ${m.split(", ").length - 1} columns = ?, `)
    .replace(/select "tasks"\.\* from/, "select * from")
    .replace(/\s+/g, " ");
}

function task(i: number): NewTask {
  return {
    requestId: "",
    toolName: "bench-tool",
    toolCallId: `call-${i}`,
    args: { query: "tide tables", n: i },
    agentId: `agent-${i % 16}`,
    runId: `run-${Math.floor(i / 100)}`,
    threadId: "",
    resourceId: "",
    maxRetries: 0,
    timeoutMs: 300_000,
    retryDelayMs: 1000,
    retryBackoff: 2,
    maxRetryDelayMs: 60_000,
    backpressure: "queue",
  };
}

function roundLine(): string {
  if (flags.many) return `dispatchMany of ${BATCH}, one claim of ${BATCH}, completeMany of them`;
  const how = flags.sequential ? "one after another" : "concurrently";
  return `dispatch ${BATCH} ${how}, one claim of ${BATCH}, complete them ${how}`;
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), "taskstream-statements-"));
  const postgres = dialect === "postgres" ? await startEmbeddedPostgres() : undefined;
  const path = join(dir, "bench.db");
  // Opened as the server opens it, with every query timed.
  const db = openDatabase(postgres ? postgres.url : path, { log });
  const kysely = db.kysely;
  try {
    await migrateToLatest(db);
    const store = new TaskStore(db, { log: new LogSignal(), pending: new LogSignal() });
    logging = true;
    const phase = { dispatch: 0, claim: 0, complete: 0 };
    // Concurrent calls queue on Kysely's one SQLite connection, as the server's requests do; --sequential awaits each.
    const each = async <T>(items: T[], fn: (item: T) => Promise<unknown>) => {
      if (!flags.sequential) return void (await Promise.all(items.map(fn)));
      for (const item of items) await fn(item);
    };
    const result = { kind: { case: "stringValue" as const, value: "ok" } };
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let done = 0; done < TASKS; done += BATCH) {
      let t = performance.now();
      const round = Array.from({ length: BATCH }, (_, k) => done + k);
      if (flags.many) await store.dispatchMany(round.map((i) => ({ input: task(i) })));
      else await each(round, (i) => store.dispatch(task(i)));
      phase.dispatch += performance.now() - t;
      t = performance.now();
      const claimed = await store.claim({ workerId: "w", leaseMs: 30_000, toolNames: ["bench-tool"], maxTasks: BATCH });
      phase.claim += performance.now() - t;
      t = performance.now();
      if (flags.many) {
        await store.completeMany(claimed.map((c) => ({ taskId: c.task.task_id, leaseId: c.lease.leaseId, value: create(ValueSchema, result) })));
      } else await each(claimed, (c) => store.complete(c.task.task_id, c.lease.leaseId, create(ValueSchema, result)));
      phase.complete += performance.now() - t;
    }
    const totalMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    const cpuUsPerTask = (cpu.user + cpu.system) / TASKS;
    logging = false;

    const queryMs = [...timings.values()].reduce((s, t) => s + t.ms, 0);
    const rows: StatementRow[] = [...timings]
      .map(([sql, t]) => ({ sql, calls: t.calls, perTask: t.calls / TASKS, totalMs: t.ms, usPerCall: (t.ms * 1000) / t.calls, share: t.ms / queryMs }))
      .sort((a, b) => b.totalMs - a.totalMs);
    const out: string[] = [];
    out.push(
      `${dialect}, ${TASKS.toLocaleString("en-US")} tasks in rounds of ${BATCH} (${roundLine()}), TaskStore in process, no RPC:`,
      "",
      `- storage alone: ${Math.round(TASKS / (totalMs / 1000)).toLocaleString("en-US")} tasks/s; per task ${((phase.dispatch * 1000) / TASKS).toFixed(0)} µs dispatch, ` +
        `${((phase.claim * 1000) / TASKS).toFixed(0)} µs claim, ${((phase.complete * 1000) / TASKS).toFixed(0)} µs complete; ` +
        `${cpuUsPerTask.toFixed(0)} µs of CPU per task (this process); ` +
        `${rows.reduce((s, r) => s + r.perTask, 0).toFixed(1)} statements per task` +
        (dialect === "sqlite"
          ? `; ${((queryMs / totalMs) * 100).toFixed(0)}% of the time inside Kysely's driver executeQuery (prepare + step),` +
            " the rest building and compiling queries, passing the connection mutex, our code, protobuf encoding of events"
          : "; on PostgreSQL a statement's time is mostly the round trip, and up to 10 run at once (pool of 10)"),
      "",
      "| statement | calls per task | µs per call | share of time in statements |",
      "| --- | ---: | ---: | ---: |",
      ...rows.map((r) => `| \`${r.sql.length > 150 ? `${r.sql.slice(0, 150)}…` : r.sql}\` | ${r.perTask.toFixed(2)} | ${r.usPerCall.toFixed(0)} | ${(r.share * 100).toFixed(1)}% |`),
    );
    await kysely.destroy();
    if (dialect === "sqlite") out.push("", ...sqliteExperiments(path, [...timings.values()].map((t) => t.example)));
    console.log(out.join("\n"));
    if (flags.json) writeFileSync(flags.json, JSON.stringify({ dialect, tasks: TASKS, totalMs, phase, rows }, null, 2));
  } finally {
    await postgres?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * On the database the run left (TASKS tasks, 3 events each): what one
 * `prepare` costs per statement shape, and what the task-row UPDATE costs as
 * Kysely writes it (every column, so SQLite maintains all of the table's
 * indexes) against one that sets only the columns a claim changes.
 */
function sqliteExperiments(path: string, examples: string[]): string[] {
  const db = new BetterSqlite3(path);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = NORMAL");
  const lines: string[] = [];
  const time = (n: number, fn: (i: number) => void) => {
    const t = performance.now();
    for (let i = 0; i < n; i++) fn(i);
    return ((performance.now() - t) * 1000) / n;
  };
  const prepareUs = examples.map((sql) => ({ sql: normalize(sql), us: time(2000, () => db.prepare(sql)) }));
  const indexes = (db.prepare("select count(*) as n from sqlite_master where type = 'index' and tbl_name = 'tasks'").get() as { n: number }).n;

  const columns = (db.prepare("select name from pragma_table_info('tasks')").all() as { name: string }[]).map((c) => c.name).filter((c) => c !== "task_id");
  const ids = (db.prepare("select task_id from tasks order by rowid limit 5000").all() as { task_id: string }[]).map((r) => r.task_id);
  const fullSql = `update "tasks" set ${columns.map((c) => `"${c}" = ?`).join(", ")} where "task_id" = ?`;
  const narrowSql = `update "tasks" set "status" = ?, "attempt" = ?, "start_time" = ?, "worker_id" = ?, "lease_id" = ?, "lease_expire_time" = ?, "timeout_time" = ?, "sequence" = ? where "task_id" = ?`;
  const rowOf = db.prepare("select * from tasks where task_id = ?");
  const rows = ids.map((id) => rowOf.get(id) as Record<string, unknown>);
  const full = db.prepare(fullSql);
  const narrow = db.prepare(narrowSql);
  const inTx = (fn: () => number) => db.transaction(fn)();
  // Same values written back, so each run sees the same table.
  const fullUs = inTx(() => time(rows.length, (i) => full.run(...columns.map((c) => rows[i][c]), ids[i])));
  const narrowUs = inTx(() =>
    time(rows.length, (i) => {
      const r = rows[i];
      narrow.run(r.status, r.attempt, r.start_time, r.worker_id, r.lease_id, r.lease_expire_time, r.timeout_time, r.sequence, ids[i]);
    }),
  );
  const fullPrepareUs = time(2000, () => db.prepare(fullSql));
  db.close();
  lines.push(
    `SQLite experiments on the resulting database (${ids.length} rows updated in one transaction each way, statements prepared once):`,
    "",
    `- task-row UPDATE setting all ${columns.length} columns, as \`apply\` does: ${fullUs.toFixed(1)} µs per row; setting only the 8 columns a claim changes: ${narrowUs.toFixed(1)} µs per row ` +
      `(the tasks table has ${indexes} indexes; SQLite rewrites every index that covers a column in the SET list, changed or not). ` +
      `Preparing the all-columns UPDATE costs ${fullPrepareUs.toFixed(0)} µs each time.`,
    "",
    "| statement (as Kysely sends it) | µs per prepare() |",
    "| --- | ---: |",
    ...prepareUs.sort((a, b) => b.us - a.us).map((p) => `| \`${p.sql.length > 150 ? `${p.sql.slice(0, 150)}…` : p.sql}\` | ${p.us.toFixed(1)} |`),
  );
  return lines;
}

await main();
process.exit(0);
