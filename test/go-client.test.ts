/**
 * The Go client's tests (clients/go): `go vet` and `go test`, whose tests run
 * their own `taskstream serve` processes. Here so that `npm test` runs them.
 * The first run downloads the Go modules and builds, hence the long timeout.
 */
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { runCommand } from "./support/run-command.js";

const dir = fileURLToPath(new URL("../clients/go", import.meta.url));

const go = (args: string[]) => runCommand("go", args, { cwd: dir, env: { ...process.env, GOFLAGS: "-mod=readonly" } });

describe("Go client (clients/go)", () => {
  it("passes go vet and go test", { timeout: 900_000 }, async () => {
    const vet = await go(["vet", "./..."]);
    expect(vet.code, vet.output).toBe(0);
    // -count=1: Go's test cache does not know the tests run this repository's server.
    const test = await go(["test", "-count=1", "./..."]);
    expect(test.code, test.output).toBe(0);
  });
});
