import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { SETTINGS } from "../src/config.js";

describe("README", () => {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");

  it("documents every setting with its flag, environment twin and default", () => {
    for (const spec of Object.values(SETTINGS)) {
      const row = readme.split("\n").find((line) => line.startsWith("|") && line.includes(`\`--${spec.flag}\``));
      expect(row, `README row for --${spec.flag}`).toBeDefined();
      expect(row).toContain(spec.env);
      if (spec.default !== "") expect(row, `default of --${spec.flag}`).toContain(`\`${spec.default}\``);
    }
  });

  it("names the test command CI runs", () => {
    expect(readme).toContain("npm test");
    expect(readFileSync(new URL("../.ci/run", import.meta.url), "utf8")).toContain("npm test");
  });
});
