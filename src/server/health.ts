import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";

/** The name grpc.health.v1 reserves for the server as a whole. */
export const OVERALL = "";

interface Watcher {
  service: string;
  /** Called with the service's new status, and with undefined when the HealthStatus shuts down. */
  wake(status: ServingStatus | undefined): void;
}

/**
 * The serving status of each service name, shared by every health call.
 * Load balancers and orchestrators read it through Check and Watch; the server
 * flips it to NOT_SERVING on shutdown so they stop routing traffic here before
 * the port closes.
 */
export class HealthStatus {
  readonly #statuses = new Map<string, ServingStatus>();
  readonly #watchers = new Set<Watcher>();
  #draining = false;
  #shutDown = false;

  /** Starts with the overall status and each named service SERVING. */
  constructor(services: Iterable<string> = []) {
    this.#statuses.set(OVERALL, ServingStatus.SERVING);
    for (const service of services) this.#statuses.set(service, ServingStatus.SERVING);
  }

  /** Records a status and tells the service's watchers. Ignored once draining, which is final. */
  set(service: string, status: ServingStatus): void {
    if (this.#draining) return;
    this.#statuses.set(service, status);
    for (const watcher of this.#watchers) if (watcher.service === service) watcher.wake(status);
  }

  /** The status of a service, or undefined if it was never set. */
  get(service: string): ServingStatus | undefined {
    return this.#statuses.get(service);
  }

  /** Every known service name with its status. */
  entries(): IterableIterator<[string, ServingStatus]> {
    return this.#statuses.entries();
  }

  /** How many watch() streams are open; zero once every client has gone. */
  get listenerCount(): number {
    return this.#watchers.size;
  }

  /**
   * Marks every service NOT_SERVING for good while the server still answers,
   * so Check and open watch() streams report it before the port closes. No
   * later set() undoes it (a database reconnecting would flip it back).
   */
  drain(): void {
    for (const service of this.#statuses.keys()) this.set(service, ServingStatus.NOT_SERVING);
    this.#draining = true;
  }

  /** Drains, if not yet, and ends every watch() stream. */
  shutdown(): void {
    this.drain();
    this.#shutDown = true;
    for (const watcher of this.#watchers) watcher.wake(undefined);
  }

  /**
   * Yields the service's status now (SERVICE_UNKNOWN if never set), then each
   * change. Ends when the signal aborts or on shutdown, and unregisters itself,
   * so an abandoned stream leaves nothing behind.
   */
  async *watch(service: string, signal: AbortSignal): AsyncGenerator<ServingStatus> {
    let pending: ServingStatus | undefined = this.get(service) ?? ServingStatus.SERVICE_UNKNOWN;
    let ended = this.#shutDown;
    let resume: (() => void) | undefined;
    const watcher: Watcher = {
      service,
      wake(status) {
        if (status === undefined) ended = true;
        else pending = status;
        resume?.();
      },
    };
    const onAbort = () => watcher.wake(undefined);
    this.#watchers.add(watcher);
    signal.addEventListener("abort", onAbort);
    let sent: ServingStatus | undefined;
    try {
      for (;;) {
        if (signal.aborted) return;
        // Only the latest status matters, so a burst of changes sends one message.
        if (pending !== undefined && pending !== sent) {
          sent = pending;
          yield sent;
          continue;
        }
        if (ended) return;
        await new Promise<void>((resolve) => (resume = resolve));
        resume = undefined;
      }
    } finally {
      this.#watchers.delete(watcher);
      signal.removeEventListener("abort", onAbort);
    }
  }
}

/**
 * Serves grpc.health.v1.Health from the given HealthStatus, so standard probes
 * (grpc_health_probe, Kubernetes gRPC probes, Envoy) can check this server.
 */
export function registerHealth(router: ConnectRouter, health: HealthStatus): void {
  router.service(Health, {
    check(request) {
      const status = health.get(request.service);
      if (status === undefined) throw new ConnectError(`unknown service "${request.service}"`, Code.NotFound);
      return { status };
    },
    list() {
      const statuses: Record<string, { status: ServingStatus }> = {};
      for (const [service, status] of health.entries()) statuses[service] = { status };
      return { statuses };
    },
    async *watch(request, context: HandlerContext) {
      for await (const status of health.watch(request.service, context.signal)) yield { status };
    },
  });
}
