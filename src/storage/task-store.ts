import { randomUUID } from "node:crypto";
import { newTaskId } from "../domain/task-ids.js";
import type { JsonObject } from "@bufbuild/protobuf";
import type { Value } from "@bufbuild/protobuf/wkt";
import { sql, type ExpressionBuilder, type SqlBool, type Transaction } from "kysely";
import { create } from "@bufbuild/protobuf";
import { TaskErrorSchema, TaskStatus, type TaskError } from "../../gen/taskstream/v1/task_pb.js";
import { agentLimit, hasLimits, SlotCounts, type ConcurrencyLimits } from "../domain/limits.js";
import { canRetry, retryDelayMs } from "../domain/retry.js";
import { requireLease, requireStatus, timedOut } from "../domain/transitions.js";
import { durationFromMs, timestampFromMs } from "../domain/time.js";
import { taskNotFound, taskstreamError } from "../errors.js";
import { Code, ConnectError } from "@connectrpc/connect";
import type { LogSignal } from "../fanout/log-signal.js";
import { LOG_CHANNEL, notificationPayload } from "../fanout/pg-log-listener.js";
import type { Db, DialectName } from "./connect.js";
import { binaryChunks, insertNewTaskRows, updateTaskRows } from "./batch-statements.js";
import { CountDeltas } from "./status-counts.js";
import { appendEvents, runningKind, type EventKind } from "./event-log.js";
import type { Database, TaskRow } from "./schema.js";
import { GroupCommit, transactionPerWork, type Writer } from "./group-commit.js";
import { fitTasks, requireAnswerFits, requireTaskFits } from "./size-budget.js";
import { errorToColumn, valueToColumn } from "./task-rows.js";

/**
 * The conditions of the sweeper's and the limits' partial indexes (migration
 * 2026-11-24T2230), as literals: SQLite uses a partial index only for a query
 * that states its condition, and cannot see it through a bound parameter.
 */
const RUNNING_ROWS = sql<SqlBool>`status = ${sql.lit(TaskStatus.RUNNING)}`;
const ACTIVE_ROWS = sql<SqlBool>`status IN (${sql.lit(TaskStatus.PENDING)}, ${sql.lit(TaskStatus.RUNNING)})`;

/** What a producer gives to create a task. */
export interface NewTask {
  requestId: string;
  toolName: string;
  toolCallId: string;
  args: JsonObject;
  agentId: string;
  runId: string;
  threadId: string;
  resourceId: string;
  maxRetries: number;
  timeoutMs: number;
  retryDelayMs: number;
  retryBackoff: number;
  maxRetryDelayMs: number;
  /** When no concurrency slot is free: wait pending, or refuse the dispatch. */
  backpressure: "queue" | "reject";
}

/** Who takes a task, and for how long, when it starts running. */
export interface ClaimBy {
  workerId: string;
  leaseMs: number;
}

export interface Lease {
  leaseId: string;
  expireTime: number;
}

export interface LeasedTask {
  task: TaskRow;
  lease: Lease;
}

/** What one dispatch made: the task, whether this call created it, and the caller's lease when it claimed. */
export interface Dispatched {
  task: TaskRow;
  created: boolean;
  lease?: Lease;
}

/**
 * How one item of a batch ended: its value, or the refusal (a ConnectError
 * with its ErrorInfo) that item alone would have got. Any other error fails
 * the whole batch.
 */
export type ItemOutcome<T> = { ok: true; value: T } | { ok: false; error: ConnectError };

/** A worker's report on one task it holds. */
export interface LeasedItem<T> {
  taskId: string;
  leaseId: string;
  value: T;
}

/** One step of a change: columns to set, and the event it appends, if any. */
interface Step {
  set: Partial<TaskRow>;
  event?: EventKind;
}

/** One write transaction: its clock reading, the newest sequence it appended, and whether it queued work. */
interface Tx {
  trx: Transaction<Database>;
  dialect: DialectName;
  now: number;
  /** Tasks it added, changed or deleted, for the counts lists report. */
  counts: CountDeltas;
  newestSequence: number;
  madePending: boolean;
}

/** Who is woken after a commit: readers of the log, and claimers waiting for work. */
export interface StoreSignals {
  log: LogSignal;
  pending: LogSignal;
}

/**
 * Every write to tasks. Each state change updates the task row and appends
 * its event in one transaction, then wakes this process's readers.
 */
export class TaskStore {
  constructor(
    readonly db: Db,
    private readonly signals: StoreSignals,
    private readonly limits: ConcurrencyLimits = { global: 0, perAgent: 0, overrides: new Map() },
    private readonly clock: () => number = Date.now,
  ) {
    // SQLite has one writer: concurrent changes share a commit. Replicas of
    // one PostgreSQL lock rows across processes, so each change commits alone.
    this.writer = db.dialect === "sqlite" ? new GroupCommit(db.kysely) : transactionPerWork(db.kysely);
  }

  private readonly writer: Writer;

  /**
   * Creates a task, or returns the one an earlier dispatch with the same
   * request_id (or agent_id + tool_call_id) created. With `claim`, the new task
   * starts RUNNING, leased to the caller.
   */
  async dispatch(input: NewTask, claim?: ClaimBy): Promise<Dispatched> {
    const { task, created } = await this.transaction(async (tx) => {
      // Insert first, look up only on a conflict: the common dispatch is new.
      const pending = newTaskRow(input, tx.now);
      const inserted = await tx.trx
        .insertInto("tasks")
        .values(pending)
        .onConflict((oc) => oc.doNothing())
        .returning("task_id")
        .executeTakeFirst();
      if (!inserted) return { task: (await findDuplicate(tx.trx, input))!, created: false };
      tx.counts.added(pending);
      const slots = await this.slotCounts(tx, input.backpressure === "reject", pending.task_id);
      if (input.backpressure === "reject" && slots && !slots.hasSlot(input.agentId)) throw noSlot(input.agentId, this.limits);
      const steps: Step[] = [queuedStep(pending)];
      // A self-claimed dispatch runs at once only in a free slot; otherwise it queues.
      if (claim && (slots ?? (await this.slotCounts(tx, false)))?.hasSlot(input.agentId) !== false) {
        steps.push(startRunning(pending, claim, tx.now));
      }
      return { task: await apply(tx, pending, steps), created: true };
    });
    return dispatched(task, created, claim);
  }

  /**
   * Dispatches each input as `dispatch` would, in one transaction whose rows
   * and events share their statements. With concurrency limits, each
   * dispatch decides against the slots the earlier ones took, one by one.
   */
  async dispatchMany(items: { input: NewTask; claim?: ClaimBy }[]): Promise<ItemOutcome<Dispatched>[]> {
    if (hasLimits(this.limits)) {
      // Each item commits alone: its answer must be known to fit before any does.
      requireAnswerFits(items.map(({ input }) => newTaskRow(input, this.clock())));
      const dispatch = ({ input, claim }: (typeof items)[number]) => this.dispatch(input, claim);
      // SQLite's group commit runs concurrent changes in arrival order; on
      // PostgreSQL each commits alone, so the next starts when one is done.
      if (this.db.dialect === "sqlite") return settle(items.map(dispatch));
      const outcomes: ItemOutcome<Dispatched>[] = [];
      for (const item of items) outcomes.push(...(await settle([dispatch(item)])));
      return outcomes;
    }
    return this.transaction(async (tx) => {
      const rows = items.map(({ input }) => newTaskRow(input, tx.now));
      // Without limits a self-claimed dispatch always has a slot: it runs at once.
      const steps = rows.map((task, i) => {
        const claim = items[i].claim;
        return claim ? [queuedStep(task), startRunning(task, claim, tx.now)] : [queuedStep(task)];
      });
      // Each row is stored as its steps leave it: a self-claimed task goes in
      // RUNNING, not PENDING and then updated, which would rewrite a dozen
      // index entries. Only its last event's sequence is set afterwards.
      const stored = rows.map((task, i) => afterSteps(task, steps[i]));
      requireAnswerFits(stored);
      const inserted = await insertNewTaskRows(tx.trx, tx.dialect, stored);
      const created: Change[] = [];
      for (const [i, task] of rows.entries()) {
        if (!inserted.has(task.task_id)) continue;
        tx.counts.added(task);
        created.push({ task, steps: steps[i], stored: stored[i] });
      }
      const byId = new Map((await applyAll(tx, created)).map((task) => [task.task_id, task]));
      const outcomes: ItemOutcome<Dispatched>[] = [];
      // An item that inserted nothing repeats an earlier dispatch, maybe one of this batch.
      for (const [i, row] of rows.entries()) {
        const task = byId.get(row.task_id) ?? (await findDuplicate(tx.trx, items[i].input))!;
        outcomes.push({ ok: true, value: dispatched(task, byId.has(row.task_id), items[i].claim) });
      }
      // A repeat answers with its task as it is now, maybe larger than what was sent.
      if (byId.size < rows.length) requireAnswerFits(outcomes.map((outcome) => (outcome as { value: Dispatched }).value.task));
      return outcomes;
    });
  }

  /** Completes each task as `complete` would, in one transaction. */
  async completeMany(items: LeasedItem<Value | undefined>[]): Promise<ItemOutcome<TaskRow>[]> {
    return this.changeMany(items.map(({ taskId, leaseId, value }) => ({ taskId, decide: completeSteps(leaseId, value) })));
  }

  /** Fails each task as `fail` would, in one transaction. */
  async failMany(items: LeasedItem<TaskError>[]): Promise<ItemOutcome<TaskRow>[]> {
    return this.changeMany(items.map(({ taskId, leaseId, value }) => ({ taskId, decide: failSteps(leaseId, value) })));
  }

  /**
   * Leases up to maxTasks pending tasks of the given tools (any when empty),
   * oldest first. A claim whose caller went away (`signal` aborted) takes
   * nothing: a lease its caller never receives would strand its task until
   * the lease expired, and then cost it an attempt, or fail it. Checked
   * before the claim commits, which rolls back, and once more after, which
   * hands what it took back (see release).
   */
  async claim(request: ClaimBy & { toolNames: string[]; maxTasks: number }, signal?: AbortSignal): Promise<LeasedTask[]> {
    const claim = await this.transaction(async (tx) => {
      const chosen = await this.claimable(tx, request);
      if (chosen.length === 0 || signal?.aborted) return undefined;
      const running = await applyAll(tx, chosen.map((task) => ({ task, steps: [startRunning(task, request, tx.now)] })));
      // The caller left while the claim ran: roll it back (one unit of a group commit alone).
      if (signal?.aborted) throw CLAIM_ABANDONED;
      return { before: chosen, running };
    }).catch((error: unknown) => {
      if (error === CLAIM_ABANDONED) return undefined;
      throw error;
    });
    if (!claim) return [];
    const leased = claim.running.map((task) => ({ task, lease: leaseOf(task) }));
    if (!signal?.aborted) return leased;
    await this.release(leased.map(({ lease }, i) => ({ before: claim.before[i], leaseId: lease.leaseId })));
    return [];
  }

  /**
   * The pending tasks a claim takes, oldest first, within the concurrency
   * limits and what one response can carry (a lease the worker never
   * receives would strand its task until the lease expires). With limits,
   * it looks past agents without a free slot: those full already are left
   * out by the query (looking past them by hand, a few hundred of one
   * agent's tasks at the head of the queue hid every other agent's); those
   * that fill up as this claim takes slots, by looking again without them.
   */
  private async claimable(tx: Tx, request: { toolNames: string[]; maxTasks: number }): Promise<TaskRow[]> {
    const slots = await this.slotCounts(tx, false);
    if (slots?.full) return [];
    const limit = slots ? request.maxTasks * 4 + 100 : request.maxTasks;
    const full = new Set(slots?.fullAgents());
    const chosen: TaskRow[] = [];
    for (let look = 0; look < 4 && chosen.length < request.maxTasks; look++) {
      const pending = await this.pendingTasks(tx, request.toolNames, { limit, skipAgents: full, skipTasks: chosen });
      let filledUp = false;
      for (const task of pending) {
        if (chosen.length === request.maxTasks || slots?.full) break;
        if (slots && !slots.hasSlot(task.agent_id)) {
          filledUp ||= !full.has(task.agent_id);
          full.add(task.agent_id);
          continue;
        }
        slots?.take(task.agent_id);
        chosen.push(task);
      }
      if (!slots || slots.full || pending.length < limit || !filledUp) break;
    }
    return chosen.slice(0, fitTasks(chosen).length);
  }

  /** Claimable pending tasks of the tools (any when none), oldest first, but those of the agents and the tasks to skip. */
  private pendingTasks(tx: Tx, toolNames: string[], query: { limit: number; skipAgents: Set<string>; skipTasks: TaskRow[] }): Promise<TaskRow[]> {
    let candidates = tx.trx
      .selectFrom("tasks")
      .selectAll()
      .where("status", "=", TaskStatus.PENDING)
      .where("ready_time", "<=", tx.now)
      .orderBy("create_time")
      .orderBy("task_id")
      .limit(query.limit);
    if (toolNames.length > 0) candidates = candidates.where("tool_name", "in", toolNames);
    if (query.skipAgents.size > 0) candidates = candidates.where(notAmong("agent_id", [...query.skipAgents], this.db.dialect));
    if (query.skipTasks.length > 0) candidates = candidates.where("task_id", "not in", query.skipTasks.map((task) => task.task_id));
    // Concurrent claimers on PostgreSQL skip each other's rows instead of waiting.
    if (this.db.dialect === "postgres") candidates = candidates.forUpdate().skipLocked();
    return candidates.execute();
  }

  /**
   * Hands tasks a claim took back, as they were before it, for a caller that
   * never received them: PENDING at the same attempt, with a `failed` event
   * whose status is PENDING and retry_time now (the task is claimable again
   * at once). A task whose lease already changed is left alone.
   */
  private async release(items: { before: TaskRow; leaseId: string }[]): Promise<void> {
    await this.changeMany(
      items.map(({ before, leaseId }) => ({
        taskId: before.task_id,
        decide: (task, now) => {
          if (task.status !== TaskStatus.RUNNING || task.lease_id !== leaseId) return [];
          // Cancelled meanwhile: a task nobody runs ends at once, as a pending one does.
          if (task.cancel_requested) return [cancelStep(task.cancel_reason, now, null)];
          const set = {
            status: TaskStatus.PENDING,
            attempt: before.attempt,
            start_time: before.start_time,
            worker_id: before.worker_id,
            lease_id: before.lease_id,
            lease_expire_time: before.lease_expire_time,
            timeout_time: before.timeout_time,
            ready_time: Math.min(before.ready_time, now),
          };
          const error = create(TaskErrorSchema, {
            message: `the claim by worker ${task.worker_id} was abandoned: its caller went away before it received the task`,
            code: "CLAIM_ABANDONED",
            retryable: true,
          });
          return [{ set, event: { case: "failed", value: { error, status: TaskStatus.PENDING, retryTime: timestampFromMs(now) } } }];
        },
      })),
    );
  }

  /**
   * Extends a lease. The worker learns to stop from the task it gets back: a
   * cancel was requested, or the task already ended CANCELLED or TIMED_OUT.
   */
  async heartbeat(taskId: string, leaseId: string, leaseMs: number): Promise<{ task: TaskRow; stop: boolean }> {
    let stop = false;
    const task = await this.change(taskId, (task, now) => {
      // An attempt past its timeout is over, whether or not the sweeper ended it yet.
      const revoked = task.status === TaskStatus.CANCELLED || task.status === TaskStatus.TIMED_OUT || (task.status === TaskStatus.RUNNING && timedOut(task, now));
      stop = revoked || task.cancel_requested === 1;
      if (revoked && leaseId === task.lease_id) return [];
      requireLease(task, leaseId, "heartbeat", now);
      return [{ set: { lease_expire_time: now + leaseMs } }];
    });
    return { task, stop };
  }

  async reportOutput(taskId: string, leaseId: string, output: Value): Promise<TaskRow> {
    return this.change(taskId, (task, now) => {
      requireLease(task, leaseId, "report_output", now);
      return [{ set: {}, event: { case: "output", value: { output } } }];
    });
  }

  async complete(taskId: string, leaseId: string, result: Value | undefined): Promise<TaskRow> {
    return this.change(taskId, completeSteps(leaseId, result));
  }

  /** Ends the task FAILED, or CANCELLED when a cancel was requested: the failure is its answer. */
  async fail(taskId: string, leaseId: string, error: TaskError): Promise<TaskRow> {
    return this.change(taskId, failSteps(leaseId, error));
  }

  async suspend(taskId: string, leaseId: string, payload: Value | undefined): Promise<TaskRow> {
    return this.change(taskId, (task, now) => {
      requireLease(task, leaseId, "suspend", now);
      // A requested cancel wins over suspending, as over failing: the task
      // ends CANCELLED instead of waiting, cancel still requested, for a
      // ResumeTask whose new attempt would be told at once to stop.
      if (task.cancel_requested) return [cancelStep(task.cancel_reason, now, null)];
      const set = { status: TaskStatus.SUSPENDED, suspend_time: now, suspend_payload: valueToColumn(payload) };
      return [{ set, event: { case: "suspended", value: { payload } } }];
    });
  }

  /**
   * Cancels a pending or suspended task at once; marks a running one, whose
   * worker learns it on its next heartbeat. Cancelling a cancelled task is a no-op.
   */
  async cancel(taskId: string, reason: string): Promise<TaskRow> {
    return this.change(taskId, (task, now) => {
      if (task.status === TaskStatus.CANCELLED) return [];
      requireStatus(task, "cancel");
      if (task.status !== TaskStatus.RUNNING) return [cancelStep(reason, now, null)];
      return task.cancel_requested ? [] : [{ set: { cancel_requested: 1, cancel_reason: reason } }];
    });
  }

  /**
   * Makes a suspended task claimable again. With `claim` it runs at once for
   * the caller, as a self-claimed dispatch does, only in a free concurrency
   * slot (its own was freed when it suspended); otherwise it waits PENDING for
   * a worker and the caller gets no lease. ResumeTask names no backpressure,
   * so there is nothing to reject with: the task is never lost by queueing.
   */
  async resume(taskId: string, resumeData: Value | undefined, claim?: ClaimBy): Promise<{ task: TaskRow; lease?: Lease }> {
    const task = await this.change(taskId, async (task, now, tx) => {
      requireStatus(task, "resume");
      const resumed: Step = {
        set: { status: TaskStatus.PENDING, resume_data: valueToColumn(resumeData) },
        event: { case: "resumed", value: { resumeData } },
      };
      if (!claim || (await this.slotCounts(tx, false))?.hasSlot(task.agent_id) === false) return [resumed];
      return [resumed, startRunning({ ...task, ...resumed.set }, claim, now)];
    });
    return { task, lease: claim && task.status === TaskStatus.RUNNING ? leaseOf(task) : undefined };
  }

  /**
   * Ends or retries running tasks whose attempt timed out or whose lease
   * expired (the worker stopped heartbeating). Each is re-checked under its
   * row lock, so when several replicas sweep, one acts. Returns how many were due.
   */
  async expire(limit = 100): Promise<number> {
    const now = this.clock();
    // One query per index: an OR of both conditions did not use the partial indexes.
    const running = this.db.kysely.selectFrom("tasks").select("task_id").where(RUNNING_ROWS).limit(limit);
    const leaseExpired = await running.where("lease_expire_time", "<=", now).execute();
    const timedOut = await running.where("timeout_time", ">", 0).where("timeout_time", "<=", now).execute();
    const due = new Set([...leaseExpired, ...timedOut].map((row) => row.task_id));
    for (const taskId of [...due].slice(0, limit)) await this.change(taskId, expirySteps);
    return Math.min(due.size, limit);
  }

  /**
   * Deletes finished tasks, with their events, once older than their status's
   * retention age, and moves the log's trimmed_through past every deleted
   * event, so older stream cursors expire. Returns how many tasks it deleted.
   */
  async deleteExpired(ages: RetentionAges, batch = 1000): Promise<number> {
    const now = this.clock();
    const olderThan = (statuses: TaskStatus[], ageMs: number) => (eb: ExpressionBuilder<Database, "tasks">) =>
      eb.and([eb("status", "in", statuses), eb("complete_time", "<", now - ageMs)]);
    const expired = await this.db.kysely
      .selectFrom("tasks")
      .select("task_id")
      .where((eb) =>
        eb.or([
          olderThan([TaskStatus.COMPLETED], ages.completedMs)(eb),
          olderThan([TaskStatus.FAILED, TaskStatus.TIMED_OUT], ages.failedMs)(eb),
          olderThan([TaskStatus.CANCELLED], ages.cancelledMs)(eb),
        ]),
      )
      .limit(batch)
      .execute();
    if (expired.length === 0) return 0;
    const ids = expired.map((r) => r.task_id);
    await this.db.kysely.transaction().execute(async (trx) => {
      const newest = await trx.selectFrom("events").select((eb) => eb.fn.max("sequence").as("s")).where("task_id", "in", ids).executeTakeFirst();
      await trx.deleteFrom("events").where("task_id", "in", ids).execute();
      // What this transaction deleted: another replica's retention may have been first.
      const deleted = await trx.deleteFrom("tasks").where("task_id", "in", ids).returning(["status", "create_time", "start_time", "complete_time"]).execute();
      const counts = new CountDeltas(this.db.dialect);
      for (const task of deleted) counts.removed(task);
      await counts.write(trx);
      const trimmed = Number(newest?.s ?? 0);
      await trx
        .updateTable("log_head")
        .set({ trimmed_through: sql`case when trimmed_through < ${trimmed} then ${trimmed} else trimmed_through end` })
        .where("id", "=", 1)
        .execute();
    });
    return ids.length;
  }

  /**
   * Running (and with `countPending`, pending) counts, but for
   * `excludeTaskId` (the task being dispatched), under a lock that every
   * slot-taking transaction takes first, so no two count at once; undefined
   * when no limit is set. SQLite serializes writers by itself.
   */
  private async slotCounts(tx: Tx, countPending: boolean, excludeTaskId?: string): Promise<SlotCounts | undefined> {
    if (!hasLimits(this.limits)) return undefined;
    if (this.db.dialect === "postgres") {
      await tx.trx.selectFrom("log_head").select("id").where("id", "=", 1).forUpdate().execute();
    }
    const statuses = countPending ? [TaskStatus.RUNNING, TaskStatus.PENDING] : [TaskStatus.RUNNING];
    const rows = await tx.trx
      .selectFrom("tasks")
      .select((eb) => ["agent_id", eb.fn.countAll<number | string>().as("n")])
      .where(ACTIVE_ROWS)
      .where("status", "in", statuses)
      .$if(excludeTaskId !== undefined, (q) => q.where("task_id", "<>", excludeTaskId!))
      .groupBy("agent_id")
      .execute();
    const byAgent = new Map(rows.map((r) => [r.agent_id, Number(r.n)]));
    const total = [...byAgent.values()].reduce((a, b) => a + b, 0);
    return new SlotCounts(this.limits, total, byAgent);
  }

  /** Loads the task, lets `decide` check it and choose its steps, and applies them. */
  private async change(taskId: string, decide: Decide): Promise<TaskRow> {
    const [outcome] = await this.changeMany([{ taskId, decide }]);
    if (!outcome.ok) throw outcome.error;
    return outcome.value;
  }

  /**
   * Loads the tasks, lets each item's `decide` check its task (as the items
   * before it left it) and choose steps, and applies every item's steps
   * together. An item `decide` refuses changes nothing; the others commit.
   *
   * On PostgreSQL the rows are locked first, in task_id order, so two batches
   * never wait on each other in a cycle; a `decide` that counts slots takes
   * the log_head lock after them, the order every change appending an event
   * already follows.
   */
  private async changeMany(items: { taskId: string; decide: Decide }[]): Promise<ItemOutcome<TaskRow>[]> {
    return this.transaction(async (tx) => {
      const current = await this.lockTasks(tx, items.map((item) => item.taskId));
      const changes = new Map<string, { task: TaskRow; steps: Step[] }>();
      const decided: (string | ConnectError)[] = [];
      for (const { taskId, decide } of items) {
        const task = current.get(taskId);
        if (!task) {
          decided.push(taskNotFound(taskId));
          continue;
        }
        try {
          const steps = await decide(task, tx.now, tx);
          const next = steps.reduce((row, step) => ({ ...row, ...step.set }), task);
          requireTaskFits(next, () => payloadField(steps));
          const change = changes.get(taskId) ?? { task, steps: [] };
          change.steps.push(...steps);
          changes.set(taskId, change);
          current.set(taskId, next);
          decided.push(taskId);
        } catch (error) {
          if (!(error instanceof ConnectError)) throw error;
          decided.push(error);
        }
      }
      const applied = new Map((await applyAll(tx, [...changes.values()])).map((task) => [task.task_id, task]));
      return decided.map((item) => (typeof item === "string" ? { ok: true, value: applied.get(item)! } : { ok: false, error: item }));
    });
  }

  /** The tasks' rows by id; on PostgreSQL locked for update, in id order. */
  private async lockTasks(tx: Tx, taskIds: string[]): Promise<Map<string, TaskRow>> {
    const rows = new Map<string, TaskRow>();
    for (const ids of binaryChunks([...new Set(taskIds)].sort())) {
      let select = tx.trx.selectFrom("tasks").selectAll().where("task_id", "in", ids);
      if (tx.dialect === "postgres") select = select.orderBy("task_id").forUpdate();
      for (const row of await select.execute()) rows.set(row.task_id, row);
    }
    return rows;
  }

  /** Runs a write transaction and, once it committed, tells readers how far the log got. */
  private async transaction<T>(work: (tx: Tx) => Promise<T>): Promise<T> {
    const { value, tx } = await this.writer.run(async (trx) => {
      const tx: Tx = { trx, dialect: this.db.dialect, now: this.clock(), counts: new CountDeltas(this.db.dialect), newestSequence: 0, madePending: false };
      const value = await work(tx);
      await tx.counts.write(trx);
      // Other replicas hear of the commit when it happens (NOTIFY is sent at commit).
      if (this.db.dialect === "postgres" && tx.newestSequence > 0) {
        await sql`select pg_notify(${LOG_CHANNEL}, ${notificationPayload(tx.newestSequence, tx.madePending)})`.execute(trx);
      }
      return { value, tx };
    });
    if (tx.newestSequence > 0) {
      this.signals.log.notify(tx.newestSequence);
      if (tx.madePending) this.signals.pending.notify(tx.newestSequence);
    }
    return value;
  }
}

/** `column` is none of `values`, bound as one parameter however many they are. */
function notAmong(column: "agent_id", values: string[], dialect: DialectName) {
  return dialect === "postgres"
    ? sql<SqlBool>`${sql.ref(column)} <> ALL(${values}::text[])`
    : sql<SqlBool>`${sql.ref(column)} NOT IN (SELECT value FROM json_each(${JSON.stringify(values)}))`;
}

/** Thrown inside a claim's transaction to roll it back when its caller went away. */
const CLAIM_ABANDONED = new Error("claim abandoned: its caller went away");

/** Applies steps to a task: one row update, and their events appended in order. */
async function apply(tx: Tx, task: TaskRow, steps: Step[]): Promise<TaskRow> {
  return (await applyAll(tx, [{ task, steps }]))[0];
}

/**
 * A task's change: its steps from `task`, and the row as stored now when that
 * is not `task` (a new task stored as its steps leave it).
 */
interface Change {
  task: TaskRow;
  steps: Step[];
  stored?: TaskRow;
}

/** The row as the steps leave it. */
function afterSteps(task: TaskRow, steps: Step[]): TaskRow {
  return steps.reduce((row, step) => ({ ...row, ...step.set }), task);
}

/**
 * Applies each task's steps: the events of all of them appended in one go (one
 * sequence allocation, one insert), then the rows updated, sharing a
 * statement where the same columns changed.
 */
async function applyAll(tx: Tx, changes: Change[]): Promise<TaskRow[]> {
  const entries: { task: TaskRow; kind: EventKind }[] = [];
  const nexts = changes.map(({ task, steps }) => {
    let next = task;
    for (const step of steps) {
      next = { ...next, ...step.set };
      if (step.set.status === TaskStatus.PENDING) tx.madePending = true;
      if (step.event) entries.push({ task: next, kind: step.event });
    }
    return next;
  });
  const events = await appendEvents(tx.trx, tx.dialect, entries, tx.now);
  // Each task's row records the sequence of its last event.
  const lastSequence = new Map(events.map((e) => [e.taskId, Number(e.sequence)]));
  if (events.length > 0) tx.newestSequence = Number(events[events.length - 1].sequence);
  const updated = nexts.map((next) => ({ ...next, sequence: lastSequence.get(next.task_id) ?? next.sequence }));
  changes.forEach(({ task }, i) => tx.counts.changed(task, updated[i]));
  await updateTaskRows(
    tx.trx,
    tx.dialect,
    updated.map((row, i) => ({ taskId: row.task_id, set: changedColumns(changes[i].stored ?? changes[i].task, row) })),
  );
  return updated;
}

/**
 * The columns whose values differ: an UPDATE that sets a column rewrites
 * every index on it, changed or not, and the tasks table has many.
 */
function changedColumns(before: TaskRow, after: TaskRow): Partial<TaskRow> {
  const changed: Record<string, unknown> = {};
  for (const column of Object.keys(after) as (keyof TaskRow)[]) {
    if (after[column] !== before[column]) changed[column] = after[column];
  }
  return changed as Partial<TaskRow>;
}

function newTaskRow(input: NewTask, now: number): TaskRow {
  return {
    task_id: newTaskId(now),
    request_id: input.requestId === "" ? null : input.requestId,
    status: TaskStatus.PENDING,
    tool_name: input.toolName,
    tool_call_id: input.toolCallId,
    agent_id: input.agentId,
    run_id: input.runId,
    thread_id: input.threadId,
    resource_id: input.resourceId,
    args: JSON.stringify(input.args),
    result: null,
    error: null,
    create_time: now,
    start_time: 0,
    suspend_time: 0,
    complete_time: 0,
    attempt: 0,
    max_retries: input.maxRetries,
    timeout_ms: input.timeoutMs,
    sequence: 0,
    cancel_requested: 0,
    cancel_reason: "",
    suspend_payload: null,
    resume_data: null,
    worker_id: "",
    lease_id: "",
    lease_expire_time: 0,
    ready_time: now,
    timeout_time: 0,
    retry_delay_ms: input.retryDelayMs,
    retry_backoff: input.retryBackoff,
    max_retry_delay_ms: input.maxRetryDelayMs,
  };
}

/** The task an earlier dispatch with the same identity created, if any. */
function findDuplicate(trx: Transaction<Database>, input: NewTask): Promise<TaskRow | undefined> {
  if (input.requestId === "" && input.toolCallId === "") return Promise.resolve(undefined);
  return trx
    .selectFrom("tasks")
    .selectAll()
    .where((eb) =>
      eb.or([
        ...(input.requestId !== "" ? [eb("request_id", "=", input.requestId)] : []),
        ...(input.toolCallId !== ""
          ? [
              eb.and([
                eb("agent_id", "=", input.agentId),
                eb("tool_call_id", "=", input.toolCallId),
                // Repeats the unique index's own condition, without which
                // SQLite will not use that partial index.
                eb("tool_call_id", "<>", ""),
              ]),
            ]
          : []),
      ]),
    )
    .executeTakeFirst();
}

/** A new task's first step: PENDING, with its queued event. */
function queuedStep(task: TaskRow): Step {
  const value = { args: JSON.parse(task.args) as JsonObject, maxRetries: task.max_retries, timeout: durationFromMs(task.timeout_ms) };
  return { set: { status: TaskStatus.PENDING }, event: { case: "queued", value } };
}

/** The request field whose payload the steps store, for an error that names it. */
function payloadField(steps: Step[]): string {
  const set = Object.assign({}, ...steps.map((step) => step.set)) as Partial<TaskRow>;
  if (set.result !== undefined) return "result";
  if (set.suspend_payload !== undefined) return "payload";
  if (set.resume_data !== undefined) return "resume_data";
  return "error";
}

/** Checks and chooses a change's steps for a task as it stands. */
type Decide = (task: TaskRow, now: number, tx: Tx) => Step[] | Promise<Step[]>;

function completeSteps(leaseId: string, result: Value | undefined): Decide {
  return (task, now) => {
    requireLease(task, leaseId, "complete", now);
    const set = { status: TaskStatus.COMPLETED, result: valueToColumn(result), complete_time: now };
    return [{ set, event: { case: "completed", value: { result } } }];
  };
}

function failSteps(leaseId: string, error: TaskError): Decide {
  return (task, now) => {
    requireLease(task, leaseId, "fail", now);
    if (task.cancel_requested) return [cancelStep(task.cancel_reason, now, errorToColumn(error))];
    if (error.retryable && canRetry(task)) return [retryStep(task, error, now)];
    return [failStep(error, TaskStatus.FAILED, now)];
  };
}

/** PENDING -> RUNNING under a fresh lease. The first claim makes attempt 1. */
function startRunning(task: TaskRow, claim: ClaimBy, now: number): Step {
  const set = {
    status: TaskStatus.RUNNING,
    attempt: Math.max(task.attempt, 1),
    start_time: now,
    worker_id: claim.workerId,
    lease_id: randomUUID(),
    lease_expire_time: now + claim.leaseMs,
    timeout_time: now + task.timeout_ms,
  };
  return { set, event: runningKind({ ...task, ...set }) };
}

/** A failed attempt with retries left: back to PENDING, claimable after its backoff delay. */
function retryStep(task: TaskRow, error: TaskError, now: number): Step {
  const readyTime = now + retryDelayMs(task, task.attempt);
  const set = { status: TaskStatus.PENDING, attempt: task.attempt + 1, ready_time: readyTime, error: errorToColumn(error) };
  return { set, event: { case: "failed", value: { error, status: TaskStatus.FAILED, retryTime: timestampFromMs(readyTime) } } };
}

/** The last attempt failed (FAILED) or ran out of time (TIMED_OUT). */
function failStep(error: TaskError, status: TaskStatus.FAILED | TaskStatus.TIMED_OUT, now: number): Step {
  const set = { status, error: errorToColumn(error), complete_time: now };
  return { set, event: { case: "failed", value: { error, status } } };
}

/** What the sweeper does with a running task: time it out, retry or fail it, or leave it. */
function expirySteps(task: TaskRow, now: number): Step[] {
  if (task.status !== TaskStatus.RUNNING) return [];
  if (!timedOut(task, now) && task.lease_expire_time > now) return [];
  // A requested cancel ends the task CANCELLED, whoever acts first.
  if (task.cancel_requested) return [cancelStep(task.cancel_reason, now, null)];
  if (timedOut(task, now)) {
    const message = `attempt ${task.attempt} ran past its timeout of ${task.timeout_ms} ms`;
    return [failStep(create(TaskErrorSchema, { message, code: "TIMEOUT" }), TaskStatus.TIMED_OUT, now)];
  }
  const message = `lease expired: worker ${task.worker_id} stopped heartbeating`;
  const error = create(TaskErrorSchema, { message, code: "LEASE_EXPIRED", retryable: true });
  return [canRetry(task) ? retryStep(task, error, now) : failStep(error, TaskStatus.FAILED, now)];
}

function noSlot(agentId: string, limits: ConcurrencyLimits) {
  const limit = agentLimit(limits, agentId);
  return taskstreamError(
    Code.ResourceExhausted,
    "CONCURRENCY_LIMIT",
    `no free slot for agent "${agentId}" (agent limit ${limit || "none"}, global limit ${limits.global || "none"}); retry later or dispatch with backpressure QUEUE`,
    { agent_id: agentId, limit: String(limit), global_limit: String(limits.global) },
  );
}

/** How long finished tasks are kept, by how they ended. */
export interface RetentionAges {
  completedMs: number;
  failedMs: number;
  cancelledMs: number;
}

function cancelStep(reason: string, now: number, error: string | null): Step {
  const set = { status: TaskStatus.CANCELLED, complete_time: now, cancel_reason: reason, error };
  return { set, event: { case: "cancelled", value: { reason } } };
}

/** Each item's value or refusal; an error that is not a refusal (storage failing) rejects the whole. */
async function settle<T>(items: Promise<T>[]): Promise<ItemOutcome<T>[]> {
  const settled = await Promise.allSettled(items);
  return settled.map((item) => {
    if (item.status === "fulfilled") return { ok: true, value: item.value };
    if (item.reason instanceof ConnectError) return { ok: false, error: item.reason };
    throw item.reason;
  });
}

/** A dispatch's answer. A repeated dispatch-with-claim gets its lease back while the same worker holds it. */
function dispatched(task: TaskRow, created: boolean, claim: ClaimBy | undefined): Dispatched {
  const holdsLease = claim && task.status === TaskStatus.RUNNING && task.worker_id === claim.workerId;
  return { task, created, lease: holdsLease ? leaseOf(task) : undefined };
}

function leaseOf(task: TaskRow): Lease {
  return { leaseId: task.lease_id, expireTime: task.lease_expire_time };
}
