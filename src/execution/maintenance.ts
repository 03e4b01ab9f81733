import type { Settings } from "../config.js";
import type { Logger } from "../log.js";
import type { TaskStore } from "../storage/task-store.js";

/** A repeating job that can be stopped, and waits for its current run when stopped. */
interface Job {
  stop(): Promise<void>;
}

/**
 * The server's background work on tasks: the sweeper (timeouts and expired
 * leases) and retention. Both are safe to run on every replica at once.
 */
export function startMaintenance(store: TaskStore, settings: Settings, logger: Logger): Job {
  const jobs = [
    repeat("sweep", settings.sweepIntervalMs, logger, async () => {
      // Keep going while a full batch was due: after a restart many may be.
      while ((await store.expire()) === 100);
    }),
    repeat("retention", settings.retentionIntervalMs, logger, async () => {
      const ages = { completedMs: settings.retainCompletedMs, failedMs: settings.retainFailedMs, cancelledMs: settings.retainCancelledMs };
      let deleted = 0;
      for (let n = await store.deleteExpired(ages); n > 0; n = await store.deleteExpired(ages)) deleted += n;
      if (deleted > 0) logger.info("retention deleted tasks", { deleted });
    }),
  ];
  return { stop: async () => void (await Promise.all(jobs.map((job) => job.stop()))) };
}

/** Runs `work` every intervalMs (never two at once), logging its failures. */
function repeat(name: string, intervalMs: number, logger: Logger, work: () => Promise<void>): Job {
  let timer: NodeJS.Timeout | undefined;
  let current: Promise<void> = Promise.resolve();
  let stopped = false;
  const run = () => {
    current = work()
      .catch((err) => logger.warn(`${name} failed`, { error: String(err) }))
      .finally(() => {
        if (!stopped) timer = setTimeout(run, intervalMs);
      });
  };
  timer = setTimeout(run, intervalMs);
  return {
    stop: async () => {
      stopped = true;
      clearTimeout(timer);
      await current;
    },
  };
}
