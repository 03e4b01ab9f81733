import { describe, expect, it } from "vitest";
import { StreamWaiters } from "../src/fanout/stream-waiters.js";
import type { EventFilter, LogEntry } from "../src/storage/event-log.js";

const filter = (f: Partial<EventFilter>): EventFilter => ({ agentId: "", runId: "", threadId: "", resourceId: "", taskId: "", toolName: "", ...f });
const entry = (sequence: number, f: Partial<LogEntry>): LogEntry => ({
  sequence,
  eventTime: 0,
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
  it("hands each subscriber the new events its filter matches past its position, one call per batch", () => {
    const waiters = new StreamWaiters();
    const got = new Map<string, number[][]>();
    const subscribe = (name: string, position: number, f: Partial<EventFilter>) =>
      waiters.subscribe({ position, filter: filter(f), deliver: (events) => got.set(name, [...(got.get(name) ?? []), events.map((e) => e.sequence)]) });
    subscribe("agent a", 10, { agentId: "a" });
    subscribe("agent a, run r2", 10, { agentId: "a", runId: "r2" });
    subscribe("agent b", 10, { agentId: "b" });
    subscribe("task t9", 10, { taskId: "t9" });
    subscribe("run r", 10, { runId: "r" });
    subscribe("all", 10, {});
    subscribe("agent a, ahead", 12, { agentId: "a" });
    expect(waiters.count).toBe(7);
    waiters.arrived([entry(11, { agentId: "a", runId: "r" })]);
    expect([...got.keys()].sort()).toEqual(["agent a", "all", "run r"]);
    const batch = [entry(12, { agentId: "c", taskId: "t9" }), entry(13, { agentId: "a", runId: "r2" })];
    waiters.arrived(batch);
    expect(Object.fromEntries(got)).toEqual({
      "agent a": [[11], [13]],
      "agent a, run r2": [[13]],
      "agent a, ahead": [[13]],
      "task t9": [[12]],
      "run r": [[11], [12]],
      all: [[11], [12, 13]],
    });
    expect(waiters.count).toBe(7);
  });

  it("gives a subscriber that matches a whole batch the batch itself, so its frames are shared", () => {
    const waiters = new StreamWaiters();
    const seen: (readonly LogEntry[])[] = [];
    waiters.subscribe({ position: 0, filter: filter({}), deliver: (events) => seen.push(events) });
    waiters.subscribe({ position: 0, filter: filter({ toolName: "tool" }), deliver: (events) => seen.push(events) });
    const batch = [entry(1, {}), entry(2, {})];
    waiters.arrived(batch);
    expect(seen).toEqual([batch, batch]);
    expect(seen.every((events) => events === batch)).toBe(true);
  });

  it("forgets a subscriber once unsubscribed, and an agent's index once it has none", () => {
    const waiters = new StreamWaiters();
    const got: number[] = [];
    const unsubscribeA = waiters.subscribe({ position: 0, filter: filter({ agentId: "a" }), deliver: (events) => got.push(...events.map((e) => e.sequence)) });
    const unsubscribeAll = waiters.subscribe({ position: 0, filter: filter({}), deliver: () => {} });
    unsubscribeA();
    unsubscribeA();
    unsubscribeAll();
    waiters.arrived([entry(1, {})]);
    expect(got).toEqual([]);
    expect(waiters.count).toBe(0);
    // A later subscriber for the same agent gets its own index entry.
    waiters.subscribe({ position: 0, filter: filter({ agentId: "a" }), deliver: (events) => got.push(...events.map((e) => e.sequence)) });
    unsubscribeA();
    waiters.arrived([entry(2, {})]);
    expect(got).toEqual([2]);
  });
});
