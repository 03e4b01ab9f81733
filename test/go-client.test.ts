/**
 * The Go client's tests (clients/go): `go vet` and `go test`, whose tests run
 * their own `taskstream serve` processes. Here so that `npm test` runs them.
 * The first run downloads the Go modules and builds, hence the long timeout.
 */
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const dir = fileURLToPath(new URL("../clients/go", import.meta.url));

function go(args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile("go", args, { cwd: dir, maxBuffer: 64 * 2 ** 20, env: { ...process.env, GOFLAGS: "-mod=readonly" } }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : -1) : 0;
      resolve({ code, output: `${err && typeof err.code !== "number" ? `${err.message}\n` : ""}${stdout}${stderr}` });
    });
  });
}

describe("Go client (clients/go)", () => {
  it("passes go vet and go test", { timeout: 900_000 }, async () => {
    const vet = await go(["vet", "./..."]);
    expect(vet.code, vet.output).toBe(0);
    // -count=1: Go's test cache does not know the tests run this repository's server.
    const test = await go(["test", "-count=1", "./..."]);
    expect(test.code, test.output).toBe(0);
  });
});
