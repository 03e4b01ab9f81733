import { describe, expect, it } from "vitest";
import { newTaskId } from "../src/domain/task-ids.js";

describe("newTaskId", () => {
  it("makes UUID v7s, unique, in the order of their milliseconds", () => {
    const ids = Array.from({ length: 5000 }, (_, i) => newTaskId(1_790_000_000_000 + Math.floor(i / 10)));
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(new Set(ids).size).toBe(ids.length);
    // Ids of a later millisecond sort after every id of an earlier one.
    for (let i = 10; i < ids.length; i += 10) expect(ids[i] > ids[i - 1]).toBe(true);
    expect(parseInt(ids[0].replace("-", "").slice(0, 12), 16)).toBe(1_790_000_000_000);
  });
});
