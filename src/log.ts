/** Structured logs: one JSON object per line on stdout. */
export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

const LEVELS = ["debug", "info", "warn", "error"] as const;
type Level = (typeof LEVELS)[number];

/**
 * Writes to stdout. A log reader that goes away (a closed pipe: EPIPE) must
 * not take the server down with it: later lines are dropped, calls go on.
 */
function writeStdout(line: string): void {
  if (!ignoringStdoutErrors) {
    process.stdout.on("error", () => {});
    ignoringStdoutErrors = true;
  }
  if (!process.stdout.destroyed) process.stdout.write(line);
}
let ignoringStdoutErrors = false;

export function createLogger(minLevel: Level = "info", write: (line: string) => void = writeStdout): Logger {
  const min = LEVELS.indexOf(minLevel);
  const log = (level: Level) => (msg: string, fields: Record<string, unknown> = {}) => {
    if (LEVELS.indexOf(level) < min) return;
    write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }) + "\n");
  };
  return { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") };
}
