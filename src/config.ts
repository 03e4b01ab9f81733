import { readFileSync } from "node:fs";
import { createSecureContext } from "node:tls";
import { parseArgs } from "node:util";
import { isPostgresUrl } from "./storage/connect.js";

/** Every server setting, each a flag with an environment twin. */
export interface Settings {
  host: string;
  port: number;
  /** A SQLite file path or a postgres:// URL. */
  database: string;
  /** PostgreSQL: connections in this server's pool. */
  databasePoolSize: number;
  /** PostgreSQL: the longest a call waits for a pool connection, connecting included. */
  databaseConnectTimeoutMs: number;
  tlsCert?: string;
  tlsKey?: string;
  /** Responses this large or larger are compressed for clients that accept it; 0 never compresses. */
  compressMinBytes: number;
  /** Origins whose pages may call from a browser (CORS); ["*"] is any; empty keeps browsers to the same origin. */
  corsOrigins: string[];
  /** Lease length when a worker names none. */
  leaseMs: number;
  maxLeaseMs: number;
  /** Timeout of a task when its dispatch names none. */
  taskTimeoutMs: number;
  maxTaskTimeoutMs: number;
  /** The longest a ClaimTasks call waits for work. */
  maxClaimWaitMs: number;
  /** Running tasks at once across all agents; 0 is no limit. */
  globalConcurrency: number;
  /** Running tasks at once per agent; 0 is no limit. */
  agentConcurrency: number;
  /** Per-agent limits that replace agentConcurrency, as "agent=limit,...". */
  agentConcurrencyOverrides: Map<string, number>;
  /** What a dispatch does when no slot is free and it names no backpressure. */
  backpressure: "queue" | "reject";
  /** Retries when a dispatch names no max_retries. */
  maxRetries: number;
  /** Delay before the first retry; each later one is `retryBackoff` times longer, up to maxRetryDelayMs. */
  retryDelayMs: number;
  retryBackoff: number;
  maxRetryDelayMs: number;
  /** How often expired leases and timed-out attempts are looked for. */
  sweepIntervalMs: number;
  /** How long finished tasks and their events are kept. */
  retainCompletedMs: number;
  retainFailedMs: number;
  retainCancelledMs: number;
  /** How often retention runs. */
  retentionIntervalMs: number;
  /** How many recent events the shared stream tail keeps in memory. */
  streamWindow: number;
  /** StreamTasks calls open at once on this server; more are refused. 0 is no limit. */
  maxStreams: number;
  /** How often a PostgreSQL server looks for events other replicas wrote. */
  logPollMs: number;
  /** How long SIGTERM keeps serving with health NOT_SERVING before shutdown begins. */
  shutdownDrainMs: number;
  /** How long shutdown lets in-flight calls finish before closing them. */
  shutdownGraceMs: number;
  logLevel: "debug" | "info" | "warn" | "error";
}

interface SettingSpec {
  flag: string;
  env: string;
  help: string;
  default: string;
  parse: (raw: string) => unknown;
}

const ms = (raw: string) => positiveInt(raw);

/** The settings table, in the order README documents it. */
export const SETTINGS: Record<keyof Settings, SettingSpec> = {
  host: { flag: "host", env: "TASKSTREAM_HOST", help: "address to listen on", default: "127.0.0.1", parse: String },
  port: { flag: "port", env: "TASKSTREAM_PORT", help: "port to listen on (0 picks a free one)", default: "7420", parse: port },
  database: {
    flag: "database",
    env: "TASKSTREAM_DATABASE",
    help: "SQLite file path or postgres:// URL",
    default: "./data/taskstream.db",
    parse: databaseLocation,
  },
  databasePoolSize: {
    flag: "database-pool-size",
    env: "TASKSTREAM_DATABASE_POOL_SIZE",
    help: "PostgreSQL: connections in the pool (plus one for LISTEN)",
    default: "10",
    parse: positiveInt,
  },
  databaseConnectTimeoutMs: {
    flag: "database-connect-timeout-ms",
    env: "TASKSTREAM_DATABASE_CONNECT_TIMEOUT_MS",
    help: "PostgreSQL: longest wait for a pool connection, connecting included; then UNAVAILABLE",
    default: "5000",
    parse: ms,
  },
  tlsCert: { flag: "tls-cert", env: "TASKSTREAM_TLS_CERT", help: "PEM certificate file; TLS needs it and --tls-key, or neither", default: "", parse: optional },
  tlsKey: { flag: "tls-key", env: "TASKSTREAM_TLS_KEY", help: "PEM private key file", default: "", parse: optional },
  compressMinBytes: {
    flag: "compress-min-bytes",
    env: "TASKSTREAM_COMPRESS_MIN_BYTES",
    help: "compress responses this large or larger for clients that accept it (0: never)",
    default: "1024",
    parse: nonNegativeInt,
  },
  corsOrigins: {
    flag: "cors-origins",
    env: "TASKSTREAM_CORS_ORIGINS",
    help: 'origins whose browser pages may call, "https://a.example,https://b.example" or "*"',
    default: "",
    parse: origins,
  },
  leaseMs: { flag: "lease-ms", env: "TASKSTREAM_LEASE_MS", help: "default lease length", default: "30000", parse: ms },
  maxLeaseMs: { flag: "max-lease-ms", env: "TASKSTREAM_MAX_LEASE_MS", help: "longest lease a worker may ask for", default: "600000", parse: ms },
  taskTimeoutMs: {
    flag: "task-timeout-ms",
    env: "TASKSTREAM_TASK_TIMEOUT_MS",
    help: "default timeout of one attempt",
    default: "300000",
    parse: ms,
  },
  maxTaskTimeoutMs: {
    flag: "max-task-timeout-ms",
    env: "TASKSTREAM_MAX_TASK_TIMEOUT_MS",
    help: "longest timeout a dispatch may ask for",
    default: "86400000",
    parse: ms,
  },
  maxClaimWaitMs: {
    flag: "max-claim-wait-ms",
    env: "TASKSTREAM_MAX_CLAIM_WAIT_MS",
    help: "longest ClaimTasks long-poll",
    default: "30000",
    parse: ms,
  },
  globalConcurrency: {
    flag: "global-concurrency",
    env: "TASKSTREAM_GLOBAL_CONCURRENCY",
    help: "running tasks at once, all agents (0: no limit)",
    default: "0",
    parse: nonNegativeInt,
  },
  agentConcurrency: {
    flag: "agent-concurrency",
    env: "TASKSTREAM_AGENT_CONCURRENCY",
    help: "running tasks at once per agent (0: no limit)",
    default: "0",
    parse: nonNegativeInt,
  },
  agentConcurrencyOverrides: {
    flag: "agent-concurrency-overrides",
    env: "TASKSTREAM_AGENT_CONCURRENCY_OVERRIDES",
    help: 'per-agent limits, "agent=limit,..."',
    default: "",
    parse: limitMap,
  },
  backpressure: {
    flag: "backpressure",
    env: "TASKSTREAM_BACKPRESSURE",
    help: "when no slot is free: queue (wait pending) or reject (RESOURCE_EXHAUSTED)",
    default: "queue",
    parse: backpressure,
  },
  maxRetries: { flag: "max-retries", env: "TASKSTREAM_MAX_RETRIES", help: "retries of a retryable failure", default: "0", parse: nonNegativeInt },
  retryDelayMs: { flag: "retry-delay-ms", env: "TASKSTREAM_RETRY_DELAY_MS", help: "delay before the first retry", default: "1000", parse: nonNegativeInt },
  retryBackoff: { flag: "retry-backoff", env: "TASKSTREAM_RETRY_BACKOFF", help: "growth of the delay per retry", default: "2", parse: atLeastOne },
  maxRetryDelayMs: {
    flag: "max-retry-delay-ms",
    env: "TASKSTREAM_MAX_RETRY_DELAY_MS",
    help: "longest delay between retries",
    default: "60000",
    parse: nonNegativeInt,
  },
  sweepIntervalMs: {
    flag: "sweep-interval-ms",
    env: "TASKSTREAM_SWEEP_INTERVAL_MS",
    help: "how often expired leases and timeouts are handled",
    default: "250",
    parse: ms,
  },
  retainCompletedMs: {
    flag: "retain-completed-ms",
    env: "TASKSTREAM_RETAIN_COMPLETED_MS",
    help: "how long completed tasks and their events are kept",
    default: "3600000",
    parse: ms,
  },
  retainFailedMs: {
    flag: "retain-failed-ms",
    env: "TASKSTREAM_RETAIN_FAILED_MS",
    help: "how long failed and timed-out tasks are kept",
    default: "86400000",
    parse: ms,
  },
  retainCancelledMs: {
    flag: "retain-cancelled-ms",
    env: "TASKSTREAM_RETAIN_CANCELLED_MS",
    help: "how long cancelled tasks are kept",
    default: "3600000",
    parse: ms,
  },
  retentionIntervalMs: {
    flag: "retention-interval-ms",
    env: "TASKSTREAM_RETENTION_INTERVAL_MS",
    help: "how often retention deletes expired tasks",
    default: "60000",
    parse: ms,
  },
  streamWindow: {
    flag: "stream-window",
    env: "TASKSTREAM_STREAM_WINDOW",
    help: "recent events kept in memory for streams; slower streams read the log",
    default: "10000",
    parse: positiveInt,
  },
  maxStreams: {
    flag: "max-streams",
    env: "TASKSTREAM_MAX_STREAMS",
    help: "StreamTasks calls open at once on this server; more fail RESOURCE_EXHAUSTED (0: no limit)",
    default: "0",
    parse: nonNegativeInt,
  },
  logPollMs: {
    flag: "log-poll-ms",
    env: "TASKSTREAM_LOG_POLL_MS",
    help: "PostgreSQL: how often to look for events other replicas wrote",
    default: "200",
    parse: ms,
  },
  // Kubernetes sends SIGTERM as it removes the pod from its Endpoints, and
  // kube-proxy, ingress controllers and balancers probing health learn of it
  // seconds later. 5 s of serving with health NOT_SERVING covers that (the
  // usual preStop sleep), and with the 10 s grace still ends well inside the
  // default terminationGracePeriodSeconds of 30.
  shutdownDrainMs: {
    flag: "shutdown-drain-ms",
    env: "TASKSTREAM_SHUTDOWN_DRAIN_MS",
    help: "on SIGTERM, time to keep serving with health NOT_SERVING before shutting down",
    default: "5000",
    parse: nonNegativeInt,
  },
  shutdownGraceMs: {
    flag: "shutdown-grace-ms",
    env: "TASKSTREAM_SHUTDOWN_GRACE_MS",
    help: "time in-flight calls get to finish on SIGTERM",
    default: "10000",
    parse: ms,
  },
  logLevel: { flag: "log-level", env: "TASKSTREAM_LOG_LEVEL", help: "debug, info, warn or error", default: "info", parse: logLevel },
};

/** Settings from flags, then environment, then defaults; `overrides` win (tests use them). */
export function loadSettings(
  argv: string[] = [],
  env: NodeJS.ProcessEnv = process.env,
  overrides: Partial<Settings> = {},
): Settings {
  const options = Object.fromEntries(Object.values(SETTINGS).map((s) => [s.flag, { type: "string" as const }]));
  const { values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
  const settings = {} as Record<string, unknown>;
  for (const [key, spec] of Object.entries(SETTINGS)) {
    const raw = (values[spec.flag] as string | undefined) ?? env[spec.env] ?? spec.default;
    try {
      settings[key] = spec.parse(raw);
    } catch (err) {
      throw new Error(`--${spec.flag} / ${spec.env}: ${(err as Error).message}`);
    }
  }
  const loaded = { ...(settings as unknown as Settings), ...overrides };
  checkTls(loaded);
  return loaded;
}

/**
 * TLS needs both files: with one, the port would serve plaintext to clients
 * that believe they set up TLS. Unreadable files, or ones that are not a
 * matching PEM pair, would fail later with an OpenSSL message that names no
 * setting. Checked here, before storage is opened, so a bad setting changes nothing.
 */
function checkTls({ tlsCert, tlsKey }: Settings): void {
  const [cert, key] = [SETTINGS.tlsCert, SETTINGS.tlsKey].map((s) => `--${s.flag} / ${s.env}`);
  if (tlsCert === undefined && tlsKey === undefined) return;
  if (tlsCert === undefined) throw new Error(`${cert} is not set but ${key} is: TLS needs both or neither`);
  if (tlsKey === undefined) throw new Error(`${key} is not set but ${cert} is: TLS needs both or neither`);
  const pem = { cert: readSettingFile(cert, tlsCert), key: readSettingFile(key, tlsKey) };
  try {
    createSecureContext(pem);
  } catch (err) {
    throw new Error(`--${SETTINGS.tlsCert.flag} / --${SETTINGS.tlsKey.flag}: not a usable PEM certificate and private key (${(err as Error).message})`);
  }
}

function readSettingFile(setting: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new Error(`${setting}: cannot read "${path}": ${(err as Error).message}`);
  }
}

/** The help text, generated from the table so it cannot drift. */
export function settingsHelp(): string {
  return Object.values(SETTINGS)
    .map((s) => `  --${s.flag.padEnd(20)} ${s.env.padEnd(32)} ${s.help}${s.default ? ` (default ${s.default})` : ""}`)
    .join("\n");
}

/**
 * Decimal digits only: Number() reads "" and " " as 0 (an empty environment
 * variable would quietly turn a setting off, or pick a random port) and
 * takes "0x10" and "1e3" too.
 */
function digits(raw: string): number {
  return /^[0-9]+$/.test(raw) ? Number(raw) : Number.NaN;
}

function positiveInt(raw: string): number {
  const n = digits(raw);
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`expected a positive integer, got "${raw}"`);
  return n;
}

function nonNegativeInt(raw: string): number {
  const n = digits(raw);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`expected a whole number, got "${raw}"`);
  return n;
}

function atLeastOne(raw: string): number {
  const n = Number(raw);
  if (!Number.isFinite(n) || n < 1) throw new Error(`expected a number of at least 1, got "${raw}"`);
  return n;
}

function limitMap(raw: string): Map<string, number> {
  const limits = new Map<string, number>();
  for (const entry of raw.split(",").filter((e) => e.trim() !== "")) {
    const [agent, limit] = entry.split("=").map((p) => p.trim());
    if (!agent || limit === undefined) throw new Error(`expected "agent=limit", got "${entry}"`);
    limits.set(agent, nonNegativeInt(limit));
  }
  return limits;
}

/**
 * Browsers send an origin as scheme://host[:port], lowercase, without a path:
 * one written otherwise would never match, so it is refused here.
 */
function origins(raw: string): string[] {
  const list = raw.split(",").map((o) => o.trim()).filter((o) => o !== "");
  if (list.includes("*") && list.length > 1) throw new Error(`"*" allows every origin; list no others beside it`);
  for (const origin of list) {
    if (origin === "*") continue;
    let parsed: URL | undefined;
    try {
      parsed = new URL(origin);
    } catch {}
    if (parsed?.origin !== origin) throw new Error(`expected origins such as https://dashboard.example.com (scheme, host and port, no path), got "${origin}"`);
  }
  return list;
}

function backpressure(raw: string): Settings["backpressure"] {
  if (raw !== "queue" && raw !== "reject") throw new Error(`expected queue or reject, got "${raw}"`);
  return raw;
}

/** A SQLite file path or a postgres:// URL. Any other URL (mysql://, file:, a mistyped postgres:/) would quietly become a file of that name. */
function databaseLocation(raw: string): string {
  const expected = "expected a SQLite file path or a postgres:// URL";
  if (raw === "") throw new Error(expected);
  if (/^[a-z][a-z0-9+.-]+:/i.test(raw) && !isPostgresUrl(raw)) throw new Error(`${expected}, got "${raw}" (write ./${raw} for a file whose name has a colon)`);
  return raw;
}

function port(raw: string): number {
  const n = digits(raw);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`expected a port, got "${raw}"`);
  return n;
}

function optional(raw: string): string | undefined {
  return raw === "" ? undefined : raw;
}

function logLevel(raw: string): Settings["logLevel"] {
  if (!["debug", "info", "warn", "error"].includes(raw)) throw new Error(`unknown log level "${raw}"`);
  return raw as Settings["logLevel"];
}
