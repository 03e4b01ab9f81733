/**
 * bench/list-tasks: ListTasks and GetTask latency over a large table, on
 * SQLite and PostgreSQL, over gRPC from connect-node, from the Go client
 * (clients/go/cmd/list-reader, built at the start of each dialect's
 * measuring; needs Go) and from a bare HTTP/2 client, and straight on
 * storage. Prints the figures and writes them to bench/README.md.
 *
 *   npm run bench:list-tasks -- [--tasks 1000000] [--dialect sqlite|postgres|both]
 *     [--samples 1000] [--warmup 100] [--deep 10000] [--max-case-seconds 15] [--no-readme]
 *     [--profile]   (the server under node --cpu-prof: slower, so its figures are not the README's)
 */
import { fork } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { cpus, tmpdir, totalmem } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { mainThreadProfile, profileText, summarizeProfile } from "../support/cpu-profile.js";
import { startBenchPostgres } from "../support/postgres.js";
import type { MeasureRequest, MeasureResult } from "./measure-child.js";
import { dialectBlock, table, updateReadme, type Dialect, type DialectReport, type RunInfo } from "./report.js";
import type { SeedRequest, SeedResult } from "./seed.js";

const GOAL_MS = 5;
const PAGE_SIZE = 50;
const here = dirname(fileURLToPath(import.meta.url));

const { values } = parseArgs({
  args: process.argv.slice(2),
  options: {
    tasks: { type: "string", default: "1000000" },
    dialect: { type: "string", default: "both" },
    samples: { type: "string", default: "1000" },
    warmup: { type: "string", default: "100" },
    deep: { type: "string" },
    "max-case-seconds": { type: "string", default: "15" },
    "no-readme": { type: "boolean", default: false },
    profile: { type: "boolean", default: false },
  },
  strict: true,
});
const count = (name: string, raw: string) => {
  const n = Number(raw.replaceAll("_", ""));
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`--${name}: expected a positive integer, got "${raw}"`);
  return n;
};
const tasks = count("tasks", values.tasks);
const dialects: Dialect[] =
  values.dialect === "both" ? ["sqlite", "postgres"] : values.dialect === "sqlite" || values.dialect === "postgres" ? [values.dialect] : [];
if (dialects.length === 0) throw new Error(`--dialect: expected sqlite, postgres or both, got "${values.dialect}"`);
// 10,000 pages deep, or halfway into a smaller table (in whole pages of 1000 for the storage walk).
const deep = values.deep === undefined ? Math.max(20, Math.min(10_000, Math.floor(tasks / PAGE_SIZE / 2 / 20) * 20)) : count("deep", values.deep);
if (deep * PAGE_SIZE >= tasks) throw new Error(`--deep ${deep} needs more than ${deep * PAGE_SIZE} tasks`);

// A profiled server runs slower: its figures do not go into the README.
const writeReadme = !values["no-readme"] && !values.profile;

const info: RunInfo = {
  command: ["npm run bench:list-tasks", ...(process.argv.length > 2 ? ["--", ...process.argv.slice(2)] : [])].join(" "),
  date: new Date().toISOString().slice(0, 10),
  machine: `${cpus().length} cores (${cpus()[0]?.model.trim() ?? "unknown CPU"}), ${Math.round(totalmem() / 2 ** 30)} GiB, Node ${process.versions.node}`,
  pageSize: PAGE_SIZE,
  goalMs: GOAL_MS,
};

/** Runs a bench script in a child process and returns what it sends back. */
function inChild<T>(script: string, message: unknown, execArgv: string[] = []): Promise<T> {
  return new Promise((resolve, reject) => {
    const child = fork(join(here, script), [], {
      stdio: ["ignore", "inherit", "inherit", "ipc"],
      execArgv: [...process.execArgv, ...execArgv],
    });
    let answered = false;
    child.once("message", (m: { ok: boolean; result?: T; error?: string }) => {
      answered = true;
      if (m.ok) resolve(m.result!);
      else reject(new Error(`${script}: ${m.error}`));
    });
    child.once("exit", (code) => answered || reject(new Error(`${script} exited with ${code}`)));
    child.send(message as never);
  });
}

async function runDialect(dialect: Dialect): Promise<DialectReport> {
  const started = performance.now();
  console.error(`\n== ${dialect}: ${tasks.toLocaleString("en-US")} tasks`);
  let location: string;
  let cleanup: () => Promise<void>;
  if (dialect === "sqlite") {
    const dir = mkdtempSync(join(tmpdir(), "taskstream-bench-"));
    location = join(dir, "taskstream.db");
    cleanup = async () => rmSync(dir, { recursive: true, force: true });
  } else {
    const postgres = await startBenchPostgres();
    location = postgres.url;
    cleanup = postgres.stop;
  }
  try {
    const nowMs = Date.now();
    // A larger young generation halves the garbage collector's share of making 1M rows.
    const seed = await inChild<SeedResult>("seed-child.ts", { location, tasks, nowMs } satisfies SeedRequest, ["--max-semi-space-size=64"]);
    console.error(
      `  seeding ${(seed.seedMs / 1000).toFixed(1)} s, statistics ${(seed.analyzeMs / 1000).toFixed(1)} s` +
        (seed.flushMs !== undefined ? `, fsync ${(seed.flushMs / 1000).toFixed(1)} s` : ""),
    );
    const profileDir = values.profile ? mkdtempSync(join(tmpdir(), "taskstream-list-profile-")) : undefined;
    const measured = await inChild<MeasureResult>("measure-child.ts", {
      location,
      tasks,
      nowMs,
      sampleIds: seed.sampleIds,
      deep,
      pageSize: PAGE_SIZE,
      samples: count("samples", values.samples),
      warmup: count("warmup", values.warmup),
      maxCaseSeconds: count("max-case-seconds", values["max-case-seconds"]),
      serverNodeFlags: profileDir ? ["--cpu-prof", "--cpu-prof-dir", profileDir] : [],
    } satisfies MeasureRequest);
    if (profileDir) printProfile(profileDir, dialect);
    const { sampleIds: _ids, ...seedFigures } = seed;
    return { dialect, tasks, seed: seedFigures, measured, totalSeconds: (performance.now() - started) / 1000 };
  } finally {
    await cleanup();
  }
}

/** Prints the summary of the server's CPU profile and keeps the file. */
function printProfile(dir: string, dialect: Dialect): void {
  const file = mainThreadProfile(dir);
  if (!file) {
    console.error("  no .cpuprofile was written");
    return;
  }
  const kept = join(tmpdir(), `taskstream-list-server-${dialect}-${Date.now()}.cpuprofile`);
  copyFileSync(file, kept);
  rmSync(dir, { recursive: true, force: true });
  console.log(`\n== the server's CPU profile (${dialect}), kept at ${kept}\n\n${profileText(summarizeProfile(kept, 40))}\n`);
}

const reports: DialectReport[] = [];
for (const dialect of dialects) {
  const report = await runDialect(dialect);
  reports.push(report);
  console.log(`\n${dialectBlock(report, info)}\n`);
  console.log("Query plans (first call of each case):\n");
  for (const c of report.measured.cases) console.log(`== ${c.name}\n${c.plans.join("\n")}\n`);
}
console.log(`\n## Summary (${info.command})\n`);
for (const r of reports) console.log(`### ${r.dialect}\n\n${table(r, GOAL_MS)}\n`);
if (writeReadme) {
  const readme = join(here, "..", "README.md");
  updateReadme(readme, info, reports);
  console.log(`Wrote ${readme}`);
}
