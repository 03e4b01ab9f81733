import { loadSettings, settingsHelp } from "./config.js";
import { createLogger } from "./log.js";
import { startServer } from "./server/server.js";

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
  const server = await startServer(settings, logger);
  const stop = (signal: string) => {
    logger.info("signal received", { signal });
    server.close().then(
      () => process.exit(0),
      (err) => {
        logger.error("shutdown failed", { error: String(err) });
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
}

main(process.argv.slice(2)).catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
});
