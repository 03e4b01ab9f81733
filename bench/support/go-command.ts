/**
 * The benches' Go programs (clients/go/cmd/*): built at the start of a run,
 * then driven as child processes that speak JSON lines: a command a line on
 * stdin, each with an `id`; an answer a line on stdout with the same `id`;
 * first a `{"msg": "... ready"}` line; `{"cmd": "exit"}` ends them.
 */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { createInterface } from "node:readline";

export type GoAnswer = Record<string, unknown> & { ok: boolean; error?: string };

/** Builds clients/go/cmd/`name` into `dir`; returns its path, or why it could not. */
export function buildGoCommand(root: string, dir: string, name: string): { path?: string; error?: string } {
  const path = join(dir, name);
  try {
    execFileSync("go", ["build", "-o", path, `./cmd/${name}`], { cwd: join(root, "clients", "go"), stdio: ["ignore", "pipe", "pipe"] });
    return { path };
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    return { error: (e.stderr?.toString().trim() || e.message).split("\n")[0] };
  }
}

/** A running Go program: commands in, answers matched to them by id. */
export class GoCommand {
  private readonly child: ChildProcess;
  private readonly pending = new Map<number, (a: GoAnswer) => void>();
  private nextId = 1;
  private exited: string | undefined;
  /** Resolves at the program's ready line; rejects if it exits first. */
  readonly ready: Promise<void>;

  constructor(path: string, private readonly label: string) {
    this.child = spawn(path, [], { stdio: ["pipe", "pipe", "inherit"] });
    let markReady!: () => void;
    let failReady!: (e: Error) => void;
    this.ready = new Promise((resolve, reject) => ((markReady = resolve), (failReady = reject)));
    createInterface({ input: this.child.stdout! }).on("line", (line) => {
      const a = JSON.parse(line) as GoAnswer & { id?: number; msg?: string };
      if (a.msg?.endsWith(" ready")) return markReady();
      const resolve = a.id === undefined ? undefined : this.pending.get(a.id);
      if (!resolve) return;
      this.pending.delete(a.id!);
      resolve(a);
    });
    this.child.once("error", (err) => failReady(err));
    this.child.once("exit", (code, signal) => {
      this.exited = `${label} exited (${code ?? signal})`;
      failReady(new Error(this.exited));
      for (const resolve of this.pending.values()) resolve({ ok: false, error: this.exited });
      this.pending.clear();
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Sends a command; resolves with its answer (ok false included: the caller decides). */
  send(command: Record<string, unknown>): Promise<GoAnswer> {
    if (this.exited) return Promise.resolve({ ok: false, error: this.exited });
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.pending.set(id, resolve);
      this.child.stdin!.write(`${JSON.stringify({ ...command, id })}\n`);
    });
  }

  /** Asks the program to exit, and kills it if it has not within 5 s. */
  async stop(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((r) => this.child.once("exit", () => r()));
    void this.send({ cmd: "exit" });
    this.child.stdin!.end();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await gone;
    clearTimeout(timer);
  }
}

/**
 * For a bench whose load generator is Go programs or their Node twins:
 * checks the flag's answer (`asked`: "go", "node" or none) and, unless it is
 * "node", builds the programs `names` into `dir`. Go asked for that does not
 * build is an error; Go by default falls back to Node, `note` saying why.
 * `paths` (by name) when Go runs.
 */
export function goOrNode(flag: string, asked: string | undefined, root: string, dir: string, names: string[]): { paths?: Record<string, string>; note?: string } {
  const choice = asked?.trim();
  if (choice !== undefined && choice !== "go" && choice !== "node") throw new Error(`--${flag}: go or node, not "${choice}"`);
  if (choice === "node") return {};
  const what = names.map((name) => `clients/go/cmd/${name}`).join(", ");
  process.stderr.write(`building ${what}\n`);
  const paths: Record<string, string> = {};
  for (const name of names) {
    const built = buildGoCommand(root, dir, name);
    if (built.path) {
      paths[name] = built.path;
      continue;
    }
    if (choice === "go") throw new Error(`--${flag} go: ${name} did not build: ${built.error}`);
    const note = `${name} did not build (${built.error}), so Node ran`;
    process.stderr.write(`  ${note}\n`);
    return { note };
  }
  return { paths };
}
