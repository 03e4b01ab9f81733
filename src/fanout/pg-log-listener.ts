import pg from "pg";
import type { Logger } from "../log.js";
import { pgConnectionOptions } from "../storage/connect.js";
import type { LogSignal } from "./log-signal.js";

/** The channel every replica notifies after a commit that appended events. */
export const LOG_CHANNEL = "taskstream_log";

/**
 * A notification's payload: the newest sequence, and "p" when the commit
 * made a task claimable. It only says that the log grew: readers always take
 * the events from the log, so a lost notification delays, never loses.
 */
export function notificationPayload(sequence: number, madePending: boolean): string {
  return madePending ? `${sequence}:p` : String(sequence);
}

export interface ListenerEvents {
  /** The LISTEN connection is up (true) or lost (false). */
  onConnection(up: boolean): void;
}

export interface ListenerOptions {
  /** The longest one connect attempt may take before it fails and is retried; default 5000 ms. */
  connectTimeoutMs?: number;
}

/**
 * Hears, over PostgreSQL LISTEN/NOTIFY, that any replica grew the log, and
 * wakes this process's tail and claimers. On a lost connection it reconnects
 * with backoff, listens again, and wakes everyone once, so they catch up from
 * the log whatever was missed meanwhile.
 */
export class PgLogListener {
  private readonly stop = new AbortController();
  private running?: Promise<void>;

  constructor(
    private readonly url: string,
    private readonly signals: { log: LogSignal; pending: LogSignal },
    private readonly events: ListenerEvents,
    private readonly logger: Logger,
    private readonly options: ListenerOptions = {},
  ) {}

  start(): void {
    this.running = this.loop();
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.running;
  }

  private async loop(): Promise<void> {
    let backoffMs = 100;
    while (!this.stop.signal.aborted) {
      // The pool's connect timeout and keepalive: a reconnect into a database
      // that accepts TCP but never answers fails and is retried instead of
      // hanging, and a dead peer of an idle LISTEN connection is found.
      const client = new pg.Client({ connectionString: this.url, ...pgConnectionOptions(this.options.connectTimeoutMs) });
      // A dying connection can emit several errors; an unheard one ends the process.
      client.on("error", () => {});
      const lost = new Promise<unknown>((resolve) => {
        client.once("error", resolve);
        client.once("end", resolve);
        this.stop.signal.addEventListener("abort", resolve, { once: true });
      });
      try {
        await client.connect();
        client.on("notification", (message) => this.wake(message.payload ?? ""));
        await client.query(`LISTEN ${LOG_CHANNEL}`);
        const head = await client.query<{ last_sequence: string }>("SELECT last_sequence FROM log_head WHERE id = 1");
        this.events.onConnection(true);
        backoffMs = 100;
        // Whatever committed while we were not listening: catch up from the log.
        this.wake(`${head.rows[0]?.last_sequence ?? 0}:p`);
        const reason = await lost;
        if (!this.stop.signal.aborted) this.logger.warn("lost the database's LISTEN connection", { error: String(reason) });
      } catch (err) {
        if (!this.stop.signal.aborted) this.logger.warn("cannot LISTEN on the database; retrying", { error: String(err), backoffMs });
      }
      client.removeAllListeners("notification");
      await client.end().catch(() => {});
      if (this.stop.signal.aborted) return;
      this.events.onConnection(false);
      await new Promise((resolve) => setTimeout(resolve, backoffMs));
      backoffMs = Math.min(backoffMs * 2, 5000);
    }
  }

  private wake(payload: string): void {
    const [sequence, pending] = payload.split(":");
    const n = Number(sequence);
    if (!Number.isSafeInteger(n)) return;
    this.signals.log.notify(n);
    if (pending === "p") this.signals.pending.notify(n);
  }
}
