/**
 * The Python client's tests (clients/python): pytest, whose tests run their
 * own `taskstream serve` processes. Here so that `npm test` runs them. The
 * first run makes .tools/python (scripts/install-python-tools.sh), hence the
 * long timeout.
 */
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = fileURLToPath(new URL("..", import.meta.url));

function run(command: string, args: string[], cwd: string): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { cwd, maxBuffer: 64 * 2 ** 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      resolve({ code, output: `${err && typeof err.code !== "number" ? `${err.message}\n` : ""}${stdout}${stderr}` });
    });
  });
}

describe("Python client (clients/python)", () => {
  it("passes its pytest suite", { timeout: 600_000 }, async () => {
    const install = await run("bash", ["scripts/install-python-tools.sh"], root);
    expect(install.code, install.output).toBe(0);
    const pytest = await run(`${root}.tools/python/bin/python`, ["-m", "pytest", "-q", "-p", "no:cacheprovider"], `${root}clients/python`);
    expect(pytest.code, pytest.output).toBe(0);
  });
});
