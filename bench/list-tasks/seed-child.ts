import { seedDatabase, type SeedRequest } from "./seed.js";

/**
 * Seeds in a child process (forked by main.ts), so that the seeding
 * connection's memory does not count in the RSS measured while serving.
 */
process.once("message", (request: SeedRequest) => {
  let reported = 0;
  const started = performance.now();
  seedDatabase(request, (done) => {
    if (done - reported >= request.tasks / 10 || done === request.tasks) {
      reported = done;
      const seconds = (performance.now() - started) / 1000;
      process.stderr.write(`  seeded ${done.toLocaleString("en-US")} tasks in ${seconds.toFixed(1)} s\n`);
    }
  }).then(
    (result) => process.send!({ ok: true, result }, () => process.exit(0)),
    (err: unknown) => process.send!({ ok: false, error: String((err as Error)?.stack ?? err) }, () => process.exit(1)),
  );
});
