import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { connectClients } from "./test-server.js";

/** A taskstream server in its own process, as a replica runs in production. */
export interface Replica {
  name: string;
  url: string;
  port: number;
  process: ChildProcess;
  clients: ReturnType<typeof connectClients>;
  /** SIGTERM, and wait for the exit. */
  stop(): Promise<void>;
  /** SIGKILL: no shutdown at all. */
  kill(): Promise<void>;
}

/** Starts `taskstream serve` on a free port and waits for its "listening" log line. */
export async function startReplica(name: string, database: string, flags: string[] = []): Promise<Replica> {
  // No drain: tests stop replicas to test what follows, not the drain.
  const args = ["serve", "--port", "0", "--database", database, "--log-level", "info", "--shutdown-drain-ms", "0", ...flags];
  const child = spawn(process.execPath, ["bin/taskstream.js", ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout! });
  const url = await new Promise<string>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`replica ${name} exited with ${code} before listening`)));
    // Only the listening line matters; other log lines are JSON too.
    lines.on("line", (line) => {
      const entry = JSON.parse(line) as { msg?: string; url?: string };
      if (entry.msg === "taskstream listening") resolve(entry.url!);
    });
  });
  const port = Number(new URL(url).port);
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const clients = connectClients(url, port);
  const end = async (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
    clients.close();
  };
  return { name, url, port, process: child, clients, stop: () => end("SIGTERM"), kill: () => end("SIGKILL") };
}
