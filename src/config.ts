import { parseArgs } from "node:util";

/** Every server setting, each a flag with an environment twin. */
export interface Settings {
  host: string;
  port: number;
  /** A SQLite file path or a postgres:// URL. */
  database: string;
  tlsCert?: string;
  tlsKey?: string;
  /** Lease length when a worker names none. */
  leaseMs: number;
  maxLeaseMs: number;
  /** Timeout of a task when its dispatch names none. */
  taskTimeoutMs: number;
  maxTaskTimeoutMs: number;
  /** The longest a ClaimTasks call waits for work. */
  maxClaimWaitMs: number;
  /** How many recent events the shared stream tail keeps in memory. */
  streamWindow: number;
  /** How often a PostgreSQL server looks for events other replicas wrote. */
  logPollMs: number;
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
    parse: String,
  },
  tlsCert: { flag: "tls-cert", env: "TASKSTREAM_TLS_CERT", help: "PEM certificate file; enables TLS with --tls-key", default: "", parse: optional },
  tlsKey: { flag: "tls-key", env: "TASKSTREAM_TLS_KEY", help: "PEM private key file", default: "", parse: optional },
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
  streamWindow: {
    flag: "stream-window",
    env: "TASKSTREAM_STREAM_WINDOW",
    help: "recent events kept in memory for streams; slower streams read the log",
    default: "10000",
    parse: positiveInt,
  },
  logPollMs: {
    flag: "log-poll-ms",
    env: "TASKSTREAM_LOG_POLL_MS",
    help: "PostgreSQL: how often to look for events other replicas wrote",
    default: "200",
    parse: ms,
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
  return { ...(settings as unknown as Settings), ...overrides };
}

/** The help text, generated from the table so it cannot drift. */
export function settingsHelp(): string {
  return Object.values(SETTINGS)
    .map((s) => `  --${s.flag.padEnd(20)} ${s.env.padEnd(32)} ${s.help}${s.default ? ` (default ${s.default})` : ""}`)
    .join("\n");
}

function positiveInt(raw: string): number {
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`expected a positive integer, got "${raw}"`);
  return n;
}

function port(raw: string): number {
  const n = Number(raw);
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
