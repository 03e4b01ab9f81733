/**
 * The producer, a process of its own (forked by main.ts): dispatches with
 * claim, so every dispatch writes two events (queued, running), to a random
 * agent among `agents`, at a steady target rate. The dispatches due at a
 * moment go in one DispatchTasks call (at most `batch` of them), as a
 * producer with work piling up would send them.
 *
 * Two of them do exactly this, behind `ProducerProcess`: this file forked
 * (`node`: connect-node), and clients/go/cmd/producer (`go`: connect-go, the
 * default when it builds), which costs the 2-core machine less CPU than Node
 * does, so the load generator steals less from the server and the stream
 * clients it measures.
 */
import { fork } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { TaskService } from "../../gen/taskstream/v1/task_service_pb.js";
import { GoCommand } from "../support/go-command.js";

export interface ProduceRequest {
  url: string;
  /** Dispatches per second; 0 means as fast as `concurrency` calls in flight allow. */
  rate: number;
  seconds: number;
  concurrency: number;
  /** Dispatches per DispatchTasks call at most. */
  batch: number;
  /** How often the dispatches due are sent, in one call. */
  tickMs: number;
  agents: number;
  /** Makes tool_call_ids unique across runs on one database. */
  tag: string;
}

export interface ProduceResult {
  dispatched: number;
  errors: number;
  firstError?: string;
  seconds: number;
  /** The newest event sequence a dispatch returned (its running event). */
  lastSequence: number;
  rpcP50Ms: number;
  rpcP99Ms: number;
  cpuCores: number;
}

/** What every bench dispatch asks: a claim, and a lease and timeout that outlast the run. */
export const dispatchShape = {
  toolName: "bench-tool",
  claim: { workerId: "bench-producer", leaseDuration: { seconds: 86_400n } },
  timeout: { seconds: 86_400n },
};

const transports = new Map<string, ReturnType<typeof createGrpcTransport>>();

export async function produce(request: ProduceRequest): Promise<ProduceResult> {
  let transport = transports.get(request.url);
  if (!transport) transports.set(request.url, (transport = createGrpcTransport({ baseUrl: request.url })));
  const tasks = createClient(TaskService, transport);
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  const endAt = started + request.seconds * 1000;
  const rpcMs: number[] = [];
  let issued = 0;
  let dispatched = 0;
  let errors = 0;
  let firstError: string | undefined;
  let lastSequence = 0;
  let inFlight = 0;
  await new Promise<void>((resolve) => {
    const pump = () => {
      const now = performance.now();
      if (now >= endAt) {
        if (inFlight === 0) resolve();
        return;
      }
      const allowed = request.rate > 0 ? Math.floor(((now - started) / 1000) * request.rate) + 1 : Infinity;
      while (inFlight < request.concurrency && issued < allowed) {
        const first = issued;
        issued = Math.min(allowed, issued + request.batch);
        inFlight++;
        const t0 = performance.now();
        const requests = Array.from({ length: issued - first }, (_, k) => {
          const n = first + k;
          return {
            ...dispatchShape,
            toolCallId: `${request.tag}-${n}`,
            agentId: `agent-${Math.floor(Math.random() * request.agents)}`,
            runId: `run-${n % 97}`,
            args: { query: `bench task ${n}`, n },
          };
        });
        tasks
          .dispatchTasks({ requests })
          .then(
            (res) => {
              rpcMs.push(performance.now() - t0);
              for (const { outcome } of res.results) {
                if (outcome.case !== "dispatched") {
                  errors++;
                  firstError ??= outcome.value?.message;
                  continue;
                }
                dispatched++;
                const seq = Number(outcome.value.task?.sequence ?? 0);
                if (seq > lastSequence) lastSequence = seq;
              }
            },
            (err: unknown) => {
              errors++;
              firstError ??= String((err as Error)?.message ?? err);
            },
          )
          .finally(() => {
            inFlight--;
            pump();
          });
      }
    };
    const ticker = setInterval(pump, request.tickMs);
    const finish = setTimeout(function check() {
      if (performance.now() >= endAt && inFlight === 0) {
        clearInterval(ticker);
        resolve();
      } else setTimeout(check, 5);
    }, request.seconds * 1000);
    void finish;
    pump();
  });
  const seconds = (performance.now() - started) / 1000;
  rpcMs.sort((a, b) => a - b);
  const q = (p: number) => (rpcMs.length ? rpcMs[Math.min(rpcMs.length - 1, Math.ceil(p * rpcMs.length) - 1)] : NaN);
  const cpu = process.cpuUsage(cpu0);
  return {
    dispatched,
    errors,
    firstError,
    seconds,
    lastSequence,
    rpcP50Ms: q(0.5),
    rpcP99Ms: q(0.99),
    cpuCores: (cpu.user + cpu.system) / 1e6 / seconds,
  };
}

export type ProducerKind = "go" | "node";
export const PRODUCER_LABEL: Record<ProducerKind, string> = {
  go: "Go (connect-go, clients/go/cmd/producer)",
  node: "Node (connect-node, bench/stream-fanout/producer.ts)",
};

/** A producer process, kept for a whole phase: one run at a time. */
export interface ProducerProcess {
  readonly kind: ProducerKind;
  run(request: ProduceRequest): Promise<ProduceResult>;
  stop(): void;
}

/** This file in a child process. */
export function nodeProducer(): ProducerProcess {
  const here = dirname(fileURLToPath(import.meta.url));
  const child = fork(join(here, "producer.ts"), [], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  return {
    kind: "node",
    run: (request) =>
      new Promise((resolve, reject) => {
        child.once("message", (m: { ok: boolean; result?: ProduceResult; error?: string }) =>
          m.ok ? resolve(m.result!) : reject(new Error(`producer: ${m.error}`)),
        );
        child.send(request);
      }),
    stop: () => void child.kill(),
  };
}

/** The Go producer built at `path`, a child speaking JSON lines (see its main.go). */
export async function goProducer(path: string): Promise<ProducerProcess> {
  const program = new GoCommand(path, "producer");
  await program.ready;
  // JSON has no NaN: the Go producer sends null for a quantile of no calls.
  const num = (x: unknown) => (x === null || x === undefined ? NaN : Number(x));
  return {
    kind: "go",
    run: async (request) => {
      const a = await program.send({ ...request });
      if (!a.ok || !a.result) throw new Error(`producer: ${a.error ?? "no result"}`);
      const r = a.result as Record<string, unknown>;
      return {
        dispatched: Number(r.dispatched),
        errors: Number(r.errors),
        firstError: (r.firstError as string | undefined) || undefined,
        seconds: Number(r.seconds),
        lastSequence: Number(r.lastSequence),
        rpcP50Ms: num(r.rpcP50Ms),
        rpcP99Ms: num(r.rpcP99Ms),
        cpuCores: Number(r.cpuCores),
      };
    },
    stop: () => void program.stop(),
  };
}

if (process.send) {
  process.on("message", (request: ProduceRequest) => {
    produce(request).then(
      (result) => process.send!({ ok: true, result }),
      (err: unknown) => process.send!({ ok: false, error: String((err as Error)?.stack ?? err) }),
    );
  });
}
