import { describe, expect, it } from "vitest";
import { StreamWaiters } from "../src/fanout/stream-waiters.js";
import type { EventFilter, LogEntry } from "../src/storage/event-log.js";

const filter = (f: Partial<EventFilter>): EventFilter => ({ agentId: "", runId: "", threadId: "", resourceId: "", taskId: "", toolName: "", ...f });
const entry = (sequence: number, f: Partial<LogEntry>): LogEntry => ({
  sequence,
  taskId: "t",
  toolName: "tool",
  agentId: "a",
  runId: "r",
  threadId: "",
  resourceId: "",
  payload: new Uint8Array(),
  ...f,
});

describe("stream waiters", () => {
  it("wakes only the streams an arriving event matches, and only for events past their position", async () => {
    const waiters = new StreamWaiters();
    const woken: string[] = [];
    const park = (name: string, position: number, f: Partial<EventFilter>) =>
      void waiters.wait(position, filter(f), 2000).then((matched) => matched && woken.push(name));
    park("agent a", 10, { agentId: "a" });
    park("agent a, run r2", 10, { agentId: "a", runId: "r2" });
    park("agent b", 10, { agentId: "b" });
    park("task t9", 10, { taskId: "t9" });
    park("run r", 10, { runId: "r" });
    park("all", 10, {});
    park("agent a, ahead", 12, { agentId: "a" });
    expect(waiters.count).toBe(7);
    waiters.arrived([entry(11, { agentId: "a", runId: "r" })]);
    await new Promise((r) => setImmediate(r));
    expect(woken.sort()).toEqual(["agent a", "all", "run r"]);
    waiters.arrived([entry(12, { agentId: "c", taskId: "t9" }), entry(13, { agentId: "a", runId: "r2" })]);
    await new Promise((r) => setImmediate(r));
    expect(woken.sort()).toEqual(["agent a", "agent a, ahead", "agent a, run r2", "all", "run r", "task t9"]);
    expect(waiters.count).toBe(1);
  });

  it("resolves false on timeout and on abort, and forgets the waiter", async () => {
    const waiters = new StreamWaiters();
    expect(await waiters.wait(0, filter({ agentId: "x" }), 20)).toBe(false);
    const abort = new AbortController();
    const parked = waiters.wait(0, filter({}), 60_000, abort.signal);
    abort.abort();
    expect(await parked).toBe(false);
    expect(waiters.count).toBe(0);
  });
});
