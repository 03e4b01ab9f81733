import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/health/v1/health_pb.js";
import { TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import { TaskService } from "../gen/taskstream/v1/task_service_pb.js";
import { SETTINGS } from "../src/config.js";
import { HealthStatus } from "../src/server/health.js";
import { cleanEnv, runCli } from "./support/cli-process.js";

// On SIGTERM the server first reports NOT_SERVING on health while it goes on
// serving for --shutdown-drain-ms, so balancers and probes see the status
// before the port closes; then it shuts down as before.

const DRAIN_MS = 1500;

describe("shutdown drain", () => {
  let dir: string;
  const children: ReturnType<typeof runCli>[] = [];
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "taskstream-drain-"));
  });
  afterAll(() => {
    for (const child of children) child.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  async function serve(flags: string[], env: Record<string, string> = {}) {
    const database = join(dir, `${Math.random().toString(36).slice(2)}.db`);
    const cli = runCli(["serve", "--port", "0", "--database", database, ...flags], { cwd: dir, env: cleanEnv(env) });
    children.push(cli);
    const url = (await cli.waitFor("taskstream listening")).url as string;
    return { cli, url };
  }

  it("on SIGTERM reports NOT_SERVING to Check and Watch while serving calls, then shuts down", async () => {
    const { cli, url } = await serve(["--shutdown-drain-ms", String(DRAIN_MS)]);
    const transport = createGrpcTransport({ baseUrl: url });
    const health = createClient(Health, transport);
    const watch = health.watch({ service: "" })[Symbol.asyncIterator]();
    expect((await watch.next()).value?.status).toBe(ServingStatus.SERVING);

    const signalled = Date.now();
    cli.child.kill("SIGTERM");
    const watched = await watch.next();
    expect(watched.value?.status).toBe(ServingStatus.NOT_SERVING);
    expect(Date.now() - signalled).toBeLessThan(DRAIN_MS);

    // During the drain: the port is open, health says NOT_SERVING on the
    // open connection and on new ones, and calls are still served.
    expect((await health.check({ service: "taskstream.v1.TaskService" })).status).toBe(ServingStatus.NOT_SERVING);
    const fresh = createGrpcTransport({ baseUrl: url });
    expect((await createClient(Health, fresh).check({ service: "" })).status).toBe(ServingStatus.NOT_SERVING);
    const { task } = await createClient(TaskService, fresh).dispatchTask({ toolName: "during-drain" });
    expect(task!.status).toBe(TaskStatus.PENDING);
    expect(Date.now() - signalled).toBeLessThan(DRAIN_MS);
    expect(cli.child.exitCode).toBeNull();

    // Then the usual shutdown: the watch ends, the process exits 0.
    const ended = await watch.next().then(
      (r) => (r.done ? "done" : `status ${r.value.status}`),
      (e: unknown) => `error ${ConnectError.from(e).code}`,
    );
    expect(ended).not.toBe(`status ${ServingStatus.SERVING}`);
    const exit = await cli.exited;
    expect(exit).toMatchObject({ code: 0, signal: null });
    expect(exit.at - signalled).toBeGreaterThanOrEqual(DRAIN_MS);
    expect(exit.at - signalled).toBeLessThan(DRAIN_MS + 5000);

    const messages = cli.logs.map((l) => l.msg);
    const order = ["signal received", "draining: health NOT_SERVING, still serving", "taskstream shutting down", "taskstream stopped"];
    expect(messages.filter((m) => order.includes(m))).toEqual(order);
    expect(cli.logs.find((l) => l.msg.startsWith("draining"))).toMatchObject({ drainMs: DRAIN_MS });
  });

  it("takes the drain from the environment, and skips it on SIGINT", async () => {
    const { cli } = await serve([], { TASKSTREAM_SHUTDOWN_DRAIN_MS: "30000" });
    const signalled = Date.now();
    cli.child.kill("SIGINT");
    const exit = await cli.exited;
    expect(exit.code).toBe(0);
    expect(exit.at - signalled).toBeLessThan(5000);
    expect(cli.logs.map((l) => l.msg)).not.toContain("draining: health NOT_SERVING, still serving");
  });

  it("defaults to a drain of 5 s, and 0 turns it off", async () => {
    expect(SETTINGS.shutdownDrainMs.default).toBe("5000");
    const { cli } = await serve(["--shutdown-drain-ms", "0"]);
    const signalled = Date.now();
    cli.child.kill("SIGTERM");
    const exit = await cli.exited;
    expect(exit.code).toBe(0);
    expect(exit.at - signalled).toBeLessThan(3000);
    expect(cli.logs.map((l) => l.msg)).not.toContain("draining: health NOT_SERVING, still serving");
  });

  it("keeps health NOT_SERVING through the drain, whatever sets it later, and keeps watches open until shutdown", async () => {
    const health = new HealthStatus(["svc"]);
    const abort = new AbortController();
    const watch = health.watch("svc", abort.signal);
    expect((await watch.next()).value).toBe(ServingStatus.SERVING);
    health.drain();
    expect((await watch.next()).value).toBe(ServingStatus.NOT_SERVING);
    // As the PostgreSQL LISTEN connection does when it reconnects.
    health.set("svc", ServingStatus.SERVING);
    expect(health.get("svc")).toBe(ServingStatus.NOT_SERVING);
    const next = watch.next();
    const pending = await Promise.race([next.then(() => "yielded"), new Promise((resolve) => setTimeout(() => resolve("open"), 100))]);
    expect(pending).toBe("open");
    health.shutdown();
    expect(await next).toEqual({ done: true, value: undefined });
  });
});
