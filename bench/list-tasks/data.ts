import { randomUUID } from "node:crypto";
import { TaskStatus } from "../../gen/taskstream/v1/task_pb.js";
import type { TaskRow } from "../../src/storage/schema.js";

/**
 * Synthetic but plausible tasks: 30 days of traffic from ~1000 agents with a
 * long tail (a few busy agents, many quiet ones), their runs, threads and
 * resources, 20 tools with a long tail, and a status mix that is mostly
 * COMPLETED. Rows come out in create_time order, as a real table fills.
 * Deterministic for a given seed, apart from the UUIDs.
 */

export const AGENTS = 1000;
export const RESOURCES = 2000;
export const DAY_MS = 86_400_000;
export const SPAN_MS = 30 * DAY_MS;

export const TOOLS = [
  "web-search", "fetch-url", "run-python", "read-file", "write-file",
  "sql-query", "vector-search", "summarize", "http-request", "shell",
  "send-email", "translate", "pdf-extract", "code-review", "image-generate",
  "calendar-lookup", "browser-navigate", "transcribe", "slack-post", "github-issue",
] as const;

/**
 * Status shares. Tasks of the last 20 hours are still in flight, a share of
 * them; older ones have ended, but for a few left suspended (awaiting a human).
 * Running tasks hold a one-day timeout and a lease that outlasts the bench, as
 * heartbeating workers keep it, so the server's sweeper finds nothing due.
 */
export const RECENT_MS = 20 * 3_600_000;
export const RECENT_STATUS_MIX: [TaskStatus, number][] = [
  [TaskStatus.COMPLETED, 0.55],
  [TaskStatus.FAILED, 0.07],
  [TaskStatus.CANCELLED, 0.02],
  [TaskStatus.TIMED_OUT, 0.01],
  [TaskStatus.RUNNING, 0.25],
  [TaskStatus.PENDING, 0.08],
  [TaskStatus.SUSPENDED, 0.02],
];
export const OLDER_STATUS_MIX: [TaskStatus, number][] = [
  [TaskStatus.COMPLETED, 0.9],
  [TaskStatus.FAILED, 0.055],
  [TaskStatus.CANCELLED, 0.025],
  [TaskStatus.TIMED_OUT, 0.01],
  [TaskStatus.SUSPENDED, 0.01],
];

const ENDED = new Set([TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.TIMED_OUT]);

const WORDS = (
  "tide tables weather berlin quarterly revenue report latency budget invoice customer " +
  "summary draft release notes kubernetes outage postmortem migration schema index " +
  "benchmark pricing competitor roadmap onboarding contract renewal translation french"
).split(" ");

const ERRORS = [
  { code: "RATE_LIMITED", message: "upstream returned 429 Too Many Requests", retryable: true },
  { code: "TIMEOUT", message: "the tool did not answer within its deadline", retryable: true },
  { code: "INVALID_ARGS", message: "argument 'url' is not a valid URL", retryable: false },
  { code: "UPSTREAM_5XX", message: "upstream returned 503 Service Unavailable", retryable: true },
];

/** mulberry32: small, fast, seedable. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Picks index k with probability proportional to weights[k], by binary search on the cumulative sums. */
function weightedPicker(weights: number[], random: () => number): () => number {
  const cumulative: number[] = [];
  let sum = 0;
  for (const w of weights) cumulative.push((sum += w));
  return () => {
    const x = random() * sum;
    let lo = 0;
    let hi = cumulative.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cumulative[mid] > x) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  };
}

export function agentId(k: number): string {
  return `agent-${String(k + 1).padStart(4, "0")}`;
}

export interface Generator {
  /** The next n rows, in create_time order. */
  next(n: number): TaskRow[];
  /** The last sequence handed out (tasks carry the sequence of their last event). */
  lastSequence(): number;
  /** Epoch ms the 30 days end at. */
  readonly nowMs: number;
}

export function taskGenerator(total: number, nowMs: number, seed = 42): Generator {
  const random = prng(seed);
  const int = (n: number) => Math.floor(random() * n);
  const pickAgent = weightedPicker(Array.from({ length: AGENTS }, (_, k) => 1 / Math.sqrt(k + 1)), random);
  const pickTool = weightedPicker(TOOLS.map((_, k) => 1 / (k + 1)), random);
  const pickRecentStatus = weightedPicker(RECENT_STATUS_MIX.map(([, share]) => share), random);
  const pickOlderStatus = weightedPicker(OLDER_STATUS_MIX.map(([, share]) => share), random);
  // Each agent works in runs (~50 tasks) inside threads (~5 runs each).
  const currentRun = new Array<string>(AGENTS).fill("");
  const currentThread = new Array<string>(AGENTS).fill("");
  let runs = 0;
  let threads = 0;
  let sequence = 0;
  let made = 0;
  const startMs = nowMs - SPAN_MS;
  const stepMs = SPAN_MS / total;
  const words = (n: number) => {
    let s = WORDS[int(WORDS.length)];
    for (let k = 1; k < n; k++) s += ` ${WORDS[int(WORDS.length)]}`;
    return s;
  };
  // Base-36 digits, about ten per random number.
  const alnum = (n: number) => {
    let s = "";
    while (s.length < n) s += Math.floor(random() * 2 ** 52).toString(36);
    return s.slice(0, n);
  };
  // Exponential with the given mean, capped.
  const exp = (mean: number, cap: number) => Math.min(cap, Math.round(-Math.log(1 - random()) * mean));

  function row(): TaskRow {
    const i = made++;
    const agent = pickAgent();
    if (currentThread[agent] === "" || random() < 1 / 250) currentThread[agent] = `thread_${(threads++).toString(36).padStart(4, "0")}${alnum(8)}`;
    if (currentRun[agent] === "" || random() < 1 / 50) currentRun[agent] = `run_${(runs++).toString(36).padStart(4, "0")}${alnum(12)}`;
    const tool = TOOLS[pickTool()];
    const create = Math.floor(startMs + i * stepMs + random() * stepMs);
    const recent = create > nowMs - RECENT_MS;
    const status = recent ? RECENT_STATUS_MIX[pickRecentStatus()][0] : OLDER_STATUS_MIX[pickOlderStatus()][0];
    const neverStarted = status === TaskStatus.PENDING || (status === TaskStatus.CANCELLED && random() < 0.5);
    // Nothing happens after now.
    const start = neverStarted ? 0 : Math.min(nowMs - 1, create + 5 + exp(1500, 600_000));
    const duration = Math.round(Math.exp(Math.log(3000) + 1.2 * gaussian(random))); // median 3 s, long tail
    const ended = ENDED.has(status);
    const complete = !ended ? 0 : Math.min(nowMs, start === 0 ? create + exp(60_000, DAY_MS) : start + Math.min(duration, 3_600_000));
    const suspend = status === TaskStatus.SUSPENDED ? Math.min(nowMs, start + Math.min(duration, 600_000)) : 0;
    const running = status === TaskStatus.RUNNING;
    const timeoutMs = running ? DAY_MS : 300_000;
    const maxRetries = int(4);
    const attempt = start === 0 ? 0 : status === TaskStatus.FAILED || status === TaskStatus.TIMED_OUT ? 1 + int(maxRetries + 1) : 1;
    const events = start === 0 ? (ended ? 2 : 1) : 2 + int(6) + (ended ? 1 : 0);
    sequence += events;
    const error = status === TaskStatus.FAILED || status === TaskStatus.TIMED_OUT ? ERRORS[int(ERRORS.length)] : undefined;
    return {
      task_id: randomUUID(),
      request_id: random() < 0.4 ? `req-${randomUUID()}` : null,
      status,
      tool_name: tool,
      // Globally unique, so unique per agent; shaped like model tool-call ids.
      tool_call_id: `call_${i.toString(36).padStart(5, "0")}${alnum(19)}`,
      agent_id: agentId(agent),
      run_id: currentRun[agent],
      thread_id: currentThread[agent],
      resource_id: `res-${String(int(RESOURCES)).padStart(5, "0")}`,
      args: JSON.stringify({ query: words(3 + int(8)), max_results: 5 + int(20), locale: "en-US" }),
      result:
        status === TaskStatus.COMPLETED
          ? JSON.stringify({ summary: words(10 + int(40)), items: int(20), source: `https://example.com/${alnum(10)}` })
          : null,
      error: error ? JSON.stringify({ ...error, stack: `Error: ${error.message}\n    at ${tool} (worker.py:${int(400)})` }) : null,
      create_time: create,
      start_time: start,
      suspend_time: suspend,
      complete_time: complete,
      attempt,
      max_retries: maxRetries,
      timeout_ms: timeoutMs,
      sequence,
      cancel_requested: status === TaskStatus.CANCELLED && start !== 0 ? 1 : 0,
      cancel_reason: status === TaskStatus.CANCELLED ? "cancelled by user" : "",
      suspend_payload: status === TaskStatus.SUSPENDED ? JSON.stringify({ awaiting: "approval", prompt: words(8) }) : null,
      resume_data: null,
      worker_id: start === 0 ? "" : `worker-${String(int(64)).padStart(2, "0")}`,
      lease_id: start === 0 ? "" : randomUUID(),
      lease_expire_time: start === 0 ? 0 : running ? nowMs + 2 * 3_600_000 : start + 30_000,
      ready_time: create,
      timeout_time: running ? start + timeoutMs : 0,
      retry_delay_ms: 1000,
      retry_backoff: 2,
      max_retry_delay_ms: 60_000,
    };
  }

  return {
    nowMs,
    next: (n) => {
      const rows: TaskRow[] = [];
      for (let k = Math.min(n, total - made); k > 0; k--) rows.push(row());
      return rows;
    },
    lastSequence: () => sequence,
  };
}

function gaussian(random: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}
