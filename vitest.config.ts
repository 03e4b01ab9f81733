import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // One PostgreSQL for the whole run; each test server gets its own database in it.
    globalSetup: ["test/support/global-setup.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // Threads, not forks: the forks pool's worker RPC has a fixed 60 s timeout
    // that fails a run whose long tests (the 1,000-task bursts, the replica
    // tests) pass, when the machine is busy (vitest-dev/vitest#8164).
    pool: "threads",
    // Two cores: two test files at a time.
    maxWorkers: 2,
    minWorkers: 1,
  },
});
