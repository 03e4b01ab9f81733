import { spawn } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

export interface LogLine {
  msg: string;
  time?: string;
  [key: string]: unknown;
}

/** The environment without any TASKSTREAM_ setting of the machine running the tests, plus `extra`. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TASKSTREAM_")) env[k] = v;
  return { ...env, ...extra };
}

/** Runs `bin/taskstream.js` in `cwd`; collects its JSON log lines and stderr, and when (and how) it exits. */
export function runCli(args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }) {
  const child = spawn(process.execPath, [join(ROOT, "bin/taskstream.js"), ...args], {
    cwd: options.cwd,
    env: options.env ?? cleanEnv(),
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: LogLine[] = [];
  let stderr = "";
  child.stderr!.on("data", (c: Buffer) => (stderr += c.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal, at: Date.now() })),
  );
  const listeners = new Set<() => void>();
  createInterface({ input: child.stdout! }).on("line", (line) => {
    try {
      logs.push({ ...(JSON.parse(line) as LogLine), receivedAt: Date.now() });
    } catch {
      // --help prints plain text.
    }
    for (const listener of listeners) listener();
  });
  /** Waits for the first log line with this msg. */
  const waitFor = (msg: string, timeoutMs = 20_000) =>
    new Promise<LogLine>((resolve, reject) => {
      const check = () => {
        const found = logs.find((l) => l.msg === msg);
        if (!found) return;
        clearTimeout(timer);
        listeners.delete(check);
        resolve(found);
      };
      const timer = setTimeout(() => {
        listeners.delete(check);
        reject(new Error(`no "${msg}" log line; stderr: ${stderr}`));
      }, timeoutMs);
      listeners.add(check);
      check();
      void exited.then(() => {
        check();
        clearTimeout(timer);
        reject(new Error(`exited before "${msg}"; stderr: ${stderr}`));
      });
    });
  const kill = () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  return { child, logs, exited, waitFor, kill, stderr: () => stderr };
}
