import { execFile } from "node:child_process";

/** Runs a command to its end: its exit code (-1 when it could not run) and its output, for an assertion's message. */
export function runCommand(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { ...options, maxBuffer: 64 * 2 ** 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      resolve({ code, output: `${err && typeof err.code !== "number" ? `${err.message}\n` : ""}${stdout}${stderr}` });
    });
  });
}
