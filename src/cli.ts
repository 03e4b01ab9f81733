import { loadSettings, settingsHelp } from "./config.js";
import { createLogger, type Logger } from "./log.js";
import { startServer, type TaskstreamServer } from "./server/server.js";

const USAGE = `taskstream: background tasks for agent systems, over gRPC, gRPC-Web and Connect

Usage: taskstream serve [flags]

Flags (each with an environment twin):
${settingsHelp()}
`;

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "help" || command === "--help" || command === "-h") {
    process.stdout.write(USAGE);
    return;
  }
  if (command !== "serve") throw new Error(`unknown command "${command}"\n\n${USAGE}`);
  const settings = loadSettings(rest);
  const logger = createLogger(settings.logLevel);
  let server: TaskstreamServer | undefined;
  const stop = async (signal: string, drainMs: number) => {
    logger.info("signal received", { signal });
    // Still starting: nothing is served yet, so nothing to drain or close.
    if (!server) process.exit(0);
    await drain(server, drainMs, logger);
    server.close().then(
      () => process.exit(0),
      (err) => {
        logger.error("shutdown failed", { error: String(err) });
        process.exit(1);
      },
    );
  };
  // SIGTERM is an orchestrator's stop: drain so balancers move away first.
  // SIGINT is someone at a terminal (or cutting a drain short): stop now.
  process.once("SIGTERM", () => void stop("SIGTERM", settings.shutdownDrainMs));
  process.once("SIGINT", () => void stop("SIGINT", 0));
  // Handlers go in first: a signal that finds none gets Node's default, which
  // ends the process at once, even just after the "listening" line.
  server = await startServer(settings, logger);
}

/**
 * Reports NOT_SERVING on health while still serving every call for drainMs,
 * so load balancers and probes see it and stop routing here before the port
 * closes and open calls are ended.
 */
async function drain(server: TaskstreamServer, drainMs: number, logger: Logger): Promise<void> {
  if (drainMs === 0) return;
  server.health.drain();
  logger.info("draining: health NOT_SERVING, still serving", { drainMs });
  await new Promise((resolve) => setTimeout(resolve, drainMs));
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
});
