/**
 * The Python client's tests (clients/python): pytest, whose tests run their
 * own `taskstream serve` processes. Here so that `npm test` runs them. The
 * first run makes .tools/python (scripts/install-python-tools.sh), hence the
 * long timeout.
 */
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { runCommand } from "./support/run-command.js";

const root = fileURLToPath(new URL("..", import.meta.url));

describe("Python client (clients/python)", () => {
  it("passes its pytest suite", { timeout: 600_000 }, async () => {
    const install = await runCommand("bash", ["scripts/install-python-tools.sh"], { cwd: root });
    expect(install.code, install.output).toBe(0);
    const pytest = await runCommand(`${root}.tools/python/bin/python`, ["-m", "pytest", "-q", "-p", "no:cacheprovider"], { cwd: `${root}clients/python` });
    expect(pytest.code, pytest.output).toBe(0);
  });
});
