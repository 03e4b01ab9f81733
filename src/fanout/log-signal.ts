/**
 * Tells waiters in this process that the event log grew. It carries only the
 * newest sequence: readers always fetch the events themselves from storage,
 * so a missed or merged wake-up can delay an event but never lose one.
 */
export class LogSignal {
  private waiters = new Set<() => void>();
  private newest = 0;

  /** The newest sequence this process has seen committed. */
  get lastSequence(): number {
    return this.newest;
  }

  notify(sequence: number): void {
    if (sequence > this.newest) this.newest = sequence;
    const woken = this.waiters;
    this.waiters = new Set();
    for (const wake of woken) wake();
  }

  /** Resolves at the next notify, when the signal aborts, or after timeoutMs. */
  next(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        this.waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, timeoutMs);
      signal?.addEventListener("abort", done);
      if (signal?.aborted) return done();
      this.waiters.add(done);
    });
  }

  /** How many waiters are parked, for gauges and leak checks. */
  get waiterCount(): number {
    return this.waiters.size;
  }
}
