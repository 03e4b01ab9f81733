import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { TaskStatus } from "../gen/taskstream/v1/task_pb.js";
import { DIALECTS, startTestServer, type TestServer } from "./support/test-server.js";

// ResumeTask with `claim` takes a concurrency slot like a self-claimed
// dispatch: it runs at once only in a free slot; otherwise the task waits
// PENDING for a worker and the answer carries no lease.

const unique = () => Math.random().toString(36).slice(2);
const GLOBAL = 3;

for (const dialect of DIALECTS) {
  describe(`ResumeTask with claim on ${dialect}`, () => {
    let t: TestServer;
    // A fresh server each: a test that fails leaves tasks running that would fill the next one's slots.
    beforeEach(async () => {
      t = await startTestServer(dialect, { globalConcurrency: GLOBAL, agentConcurrency: 1 });
    });
    afterEach(() => t?.close());

    /** A task of the agent, dispatched, claimed by the caller and suspended: its slot is free again. */
    async function suspended(toolName: string, agentId: string): Promise<string> {
      const { task, lease } = await t.tasks().dispatchTask({ toolName, agentId, claim: { workerId: "self" } });
      expect(task!.status).toBe(TaskStatus.RUNNING);
      await t.workers().suspendTask({ taskId: task!.taskId, leaseId: lease!.leaseId });
      return task!.taskId;
    }

    it("runs at once, leased to the caller, when the agent has a free slot", async () => {
      const toolName = unique();
      const taskId = await suspended(toolName, `free-${toolName}`);
      const resumed = await t.tasks().resumeTask({ taskId, claim: { workerId: "self" } });
      expect(resumed.task!.status).toBe(TaskStatus.RUNNING);
      expect(resumed.lease?.leaseId).toBeTruthy();
    });

    it("queues PENDING without a lease when the agent's slot is taken, and a worker claims it once the slot frees", async () => {
      const toolName = unique();
      const agentId = `busy-${toolName}`;
      const taskId = await suspended(toolName, agentId);
      const other = await t.tasks().dispatchTask({ toolName, agentId, claim: { workerId: "self" } });
      expect(other.task!.status).toBe(TaskStatus.RUNNING);

      const resumed = await t.tasks().resumeTask({ taskId, claim: { workerId: "self" } });
      expect(resumed.task!.status).toBe(TaskStatus.PENDING);
      expect(resumed.lease).toBeUndefined();
      const events = (await t.tasks().listTaskEvents({ taskId })).events.map((e) => e.kind.case);
      expect(events.slice(-1)).toEqual(["resumed"]);
      expect((await t.workers().claimTasks({ workerId: "w", toolNames: [toolName] })).tasks).toHaveLength(0);

      await t.workers().completeTask({ taskId: other.task!.taskId, leaseId: other.lease!.leaseId });
      const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName] });
      expect(tasks.map((c) => c.task!.taskId)).toEqual([taskId]);
    });

    it("queues when the global limit is reached", async () => {
      const toolName = unique();
      const taskId = await suspended(toolName, `global-${toolName}`);
      const running = await Promise.all(
        Array.from({ length: GLOBAL }, (_, i) => t.tasks().dispatchTask({ toolName, agentId: `filler-${i}-${toolName}`, claim: { workerId: "self" } })),
      );
      expect(running.map((r) => r.task!.status)).toEqual(Array(GLOBAL).fill(TaskStatus.RUNNING));

      const resumed = await t.tasks().resumeTask({ taskId, claim: { workerId: "self" } });
      expect(resumed.task!.status).toBe(TaskStatus.PENDING);
      expect(resumed.lease).toBeUndefined();
      await t.workers().completeTask({ taskId: running[0].task!.taskId, leaseId: running[0].lease!.leaseId });
      const { tasks } = await t.workers().claimTasks({ workerId: "w", toolNames: [toolName] });
      expect(tasks.map((c) => c.task!.taskId)).toEqual([taskId]);
    });

    it("lets only one of many concurrent resumes of one agent's tasks run", async () => {
      const toolName = unique();
      const agentId = `race-${toolName}`;
      const ids: string[] = [];
      for (let i = 0; i < 8; i++) ids.push(await suspended(toolName, agentId));
      const answers = await Promise.all(ids.map((taskId) => t.tasks().resumeTask({ taskId, claim: { workerId: "self" } })));
      const runningAnswers = answers.filter((a) => a.task!.status === TaskStatus.RUNNING);
      expect(runningAnswers).toHaveLength(1);
      expect(answers.filter((a) => a.lease !== undefined)).toHaveLength(1);
      const { totalSize } = await t.tasks().listTasks({ filter: { agentId }, statuses: [TaskStatus.RUNNING] });
      expect(Number(totalSize)).toBe(1);
    });
  });
}
