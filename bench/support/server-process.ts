/** Server processes the benches spawn: one way to start them, wait for their URL, and stop them. */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";

export interface Spawned {
  child: ChildProcess;
  pid: number;
  url: string;
  /** SIGTERM, then SIGKILL after graceMs; resolves once it exited. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Spawns a server process and waits for its JSON log line `msg === listenMsg`
 * carrying `url`. Its warning and error lines are passed through to stderr,
 * the rest of its output is dropped.
 */
export function spawnServer(command: string, args: string[], listenMsg: string, label: string, timeoutMs = 60_000): Promise<Spawned> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-20_000);
    });
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${label}: no "${listenMsg}" line within ${timeoutMs} ms\n${stderr}`));
    }, timeoutMs);
    let ready = false;
    createInterface({ input: child.stdout! }).on("line", (line) => {
      let entry: { msg?: string; url?: string; level?: string } | undefined;
      try {
        entry = JSON.parse(line) as typeof entry;
      } catch {
        return;
      }
      if (!ready && entry?.msg === listenMsg && entry.url) {
        ready = true;
        clearTimeout(timer);
        resolve({
          child,
          pid: child.pid!,
          url: entry.url,
          stop: async (graceMs = 30_000) => {
            if (child.exitCode !== null || child.signalCode !== null) return;
            child.kill("SIGTERM");
            const kill = setTimeout(() => child.kill("SIGKILL"), graceMs);
            await exited;
            clearTimeout(kill);
          },
        });
      } else if (entry?.level === "error" || entry?.level === "warn") {
        process.stderr.write(`  [${label}] ${line}\n`);
      }
    });
    child.once("exit", (code, signal) => {
      if (!ready) {
        clearTimeout(timer);
        reject(new Error(`${label} exited (${code ?? signal}) before listening\n${stderr}`));
      }
    });
  });
}

/**
 * Spawns `node [nodeFlags] bin/taskstream.js serve --shutdown-drain-ms 0 [args]`
 * (from the working directory, the repository's root) and waits until it listens.
 */
export function spawnTaskstream(nodeFlags: string[], args: string[], timeoutMs = 60_000): Promise<Spawned> {
  // stop() sends SIGTERM: no drain, or every stop would wait out its 5 s default.
  const serve = [...nodeFlags, "bin/taskstream.js", "serve", "--shutdown-drain-ms", "0", ...args];
  return spawnServer(process.execPath, serve, "taskstream listening", "server", timeoutMs);
}
