/** Markdown for the lifecycle bench, and its section of bench/README.md. */
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import type { ProfileSummary } from "../support/cpu-profile.js";
import { CLIENT_LABEL, type ClientKind } from "./procs.js";

export interface Settings {
  tasks: number;
  workerLoops: number;
  workerConnections: number;
  maxTasks: number;
  claimWaitMs: number;
  producers: number;
  producerConnections: number;
  agents: number;
  plainDispatch: boolean;
  /** Requests per DispatchTasks call; 1 is DispatchTask per task. */
  dispatchBatch: number;
  /** Tasks per CompleteTasks call; 1 is CompleteTask per task. */
  completeBatch: number;
  /** Which workers and producers ran: the Go programs or worker.ts and producer.ts. */
  clients: ClientKind;
  /** Why they are not the default (the Go programs did not build), when so. */
  clientsNote?: string;
}

export interface RunResult {
  dialect: "sqlite" | "postgres";
  /** The command that ran it, and when. */
  command: string;
  date: string;
  /** The source it ran: commit, and whether src/ had uncommitted changes. */
  source: string;
  settings: Settings;
  /** First dispatch sent to last completed event seen by the observer. */
  wallSeconds: number;
  tasksPerSecond: number;
  dispatchSeconds: number;
  dispatchPerSecond: number;
  /** Server clock: first queued event_time to last completed event_time. */
  logSpanSeconds: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  serverRssPeakBytes: number;
  serverRssEndBytes: number;
  /** CPU in cores (1 = one core busy) over the run. */
  serverCores: number;
  workerCores: number;
  producerCores: number;
  observerCores: number;
  /** PostgreSQL's processes (0 on SQLite). */
  postgresCores: number;
  /** The whole machine's busy CPU over the run, other processes included. */
  machineCores: number;
  events: number;
  violations: number;
  errors: number;
  claimCalls: number;
  emptyClaims: number;
  databaseBytes?: number;
  profile?: ProfileSummary;
}

const f0 = (n: number) => Math.round(n).toLocaleString("en-US");
const f1 = (n: number) => n.toFixed(1);
const f2 = (n: number) => n.toFixed(2);
const mib = (n: number) => `${Math.round(n / 2 ** 20)} MiB`;

export function settingsLine(s: Settings): string {
  return (
    `workers and producers: ${CLIENT_LABEL[s.clients]}${s.clientsNote ? ` (${s.clientsNote})` : ""}; ` +
    `workers: 1 process, ${s.workerLoops} claim loops over ${s.workerConnections} HTTP/2 connection(s), ` +
    `ClaimTasks max_tasks ${s.maxTasks} wait ${s.claimWaitMs} ms, then ` +
    (s.completeBatch > 1
      ? `CompleteTasks for the claimed batch (up to ${s.completeBatch} tasks a call, a batch's calls in flight at once); `
      : "CompleteTask per task (a batch's completes in flight at once); ") +
    `producers: 1 process, ${s.producers} ` +
    (s.dispatchBatch > 1 ? `DispatchTasks calls of ${s.dispatchBatch} tasks` : "DispatchTask calls") +
    ` in flight over ${s.producerConnections} connection(s), ` +
    `${s.plainDispatch ? "tool_name and args only (no agent_id or tool_call_id)" : `agent_id, tool_call_id and run_id set (${s.agents} agents)`}; observer: 1 StreamTasks (skip_snapshot) in the bench process`
  );
}

/** Which calls a run made, for its row: batch calls with their sizes, or single calls. */
function callsLabel(s: Settings): string {
  const clients = `, ${s.clients === "go" ? "Go" : "Node"} clients`;
  if (s.dispatchBatch === 1 && s.completeBatch === 1) return `, single calls${clients}`;
  return `, DispatchTasks ×${s.dispatchBatch} / CompleteTasks ×${s.completeBatch}${clients}`;
}

/** Machine CPU not used by the bench's processes: other work on the machine (and the kernel). */
export function otherCores(r: RunResult): number {
  return Math.max(0, r.machineCores - r.serverCores - r.postgresCores - r.workerCores - r.producerCores - r.observerCores);
}

export function resultsTable(results: RunResult[]): string {
  const lines = [
    "| dialect | tasks | end to end | tasks/s end to end | dispatch/s | dispatch-to-complete p50 | p90 | p99 | max | server RSS peak / end | server CPU per task | CPU (cores): server / PostgreSQL / workers / producers / observer / rest of the machine |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
  ];
  for (const r of results) {
    lines.push(
      `| ${r.dialect}${callsLabel(r.settings)}${r.settings.plainDispatch ? ", plain dispatch" : ""}${r.profile ? " (under --cpu-prof)" : ""} | ${f0(r.settings.tasks)} | ${f1(r.wallSeconds)} s | **${f0(r.tasksPerSecond)}** | ${f0(r.dispatchPerSecond)} | ` +
        `${f0(r.p50Ms)} ms | ${f0(r.p90Ms)} ms | **${f0(r.p99Ms)} ms** | ${f0(r.maxMs)} ms | ${mib(r.serverRssPeakBytes)} / ${mib(r.serverRssEndBytes)} | ${f2((r.serverCores * r.wallSeconds * 1000) / r.settings.tasks)} ms | ` +
        `${f2(r.serverCores)} / ${r.dialect === "postgres" ? f2(r.postgresCores) : "-"} / ${f2(r.workerCores)} / ${f2(r.producerCores)} / ${f2(r.observerCores)} / ${f2(otherCores(r))} |`,
    );
  }
  return lines.join("\n");
}

export function checksLine(r: RunResult): string {
  const claims = `${f0(r.claimCalls)} ClaimTasks calls (${f0(r.emptyClaims)} empty), ${f1(r.settings.tasks / Math.max(1, r.claimCalls - r.emptyClaims))} tasks per non-empty claim`;
  const db = r.databaseBytes !== undefined ? `; database ${mib(r.databaseBytes)} at the end` : "";
  return (
    `${r.dialect}: observer saw ${f0(r.events)} events (expected ${f0(r.settings.tasks * 3)}), ${r.violations} order violations, ` +
    `${r.errors} call errors; log span (server clock, first queued to last completed) ${f1(r.logSpanSeconds)} s; ` +
    `dispatching took ${f1(r.dispatchSeconds)} s; ${claims}${db}`
  );
}

export const START = "<!-- lifecycle results: generated by bench/lifecycle/main.ts --readme; start -->";
export const END = "<!-- lifecycle results: end -->";
const INTRO = "Benchmark figures; each section is written by its benchmark under `bench/` and says how to run it again.";

/**
 * Writes the generated block into the `## lifecycle` section of bench/README.md,
 * leaving the rest of the file (other benchmarks' sections) and any text of the
 * section outside the markers as they are. Reads the file right before writing.
 */
export function writeReadmeSection(path: string, block: string): void {
  const generated = `${START}\n${block.trim()}\n${END}`;
  let text = existsSync(path) ? readFileSync(path, "utf8") : `# Benchmarks\n\n${INTRO}\n`;
  const heading = /^## lifecycle[ \t]*$/m.exec(text);
  if (!heading) {
    text = `${text.trimEnd()}\n\n## lifecycle\n\n${generated}\n`;
  } else {
    const bodyStart = heading.index + heading[0].length;
    const next = /^## /m.exec(text.slice(bodyStart));
    const bodyEnd = next ? bodyStart + next.index : text.length;
    const body = text.slice(bodyStart, bodyEnd);
    const s = body.indexOf(START);
    const e = body.indexOf(END);
    const newBody =
      s >= 0 && e > s ? body.slice(0, s) + generated + body.slice(e + END.length) : `\n\n${generated}\n${next ? "\n" : ""}`;
    text = text.slice(0, bodyStart) + newBody + text.slice(bodyEnd);
  }
  writeFileSync(path, text);
}
