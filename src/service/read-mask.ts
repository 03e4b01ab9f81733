import { clearField } from "@bufbuild/protobuf";
import type { FieldMask } from "@bufbuild/protobuf/wkt";
import { TaskSchema, type Task } from "../../gen/taskstream/v1/task_pb.js";
import { invalidArgument } from "../errors.js";
import { ALL_TASK_FIELDS, hasField, type TaskFields } from "../storage/task-rows.js";

const FIELD_NUMBERS = new Map(TaskSchema.fields.map((field) => [field.name, field.number]));

/**
 * The Task fields a read_mask (AIP-157) asks for: every field when it is
 * unset, empty or holds "*". Paths name top-level fields by their proto
 * names (task_id; JSON clients write taskId, which protobuf-es maps).
 */
export function taskFields(mask: FieldMask | undefined): TaskFields {
  if (!mask || mask.paths.length === 0 || mask.paths.includes("*")) return ALL_TASK_FIELDS;
  let fields = 0;
  mask.paths.forEach((path, i) => {
    const number = FIELD_NUMBERS.get(path);
    if (number === undefined) {
      throw invalidArgument(`read_mask.paths[${i}]`, `"${path.slice(0, 100)}" is not a field of Task (top-level fields by name: task_id, status, args, ...)`);
    }
    fields |= 1 << number;
  });
  return fields;
}

/** The task with the fields outside `fields` cleared (for answers built as messages: JSON). */
export function maskTask(task: Task, fields: TaskFields): Task {
  if (fields === ALL_TASK_FIELDS) return task;
  for (const field of TaskSchema.fields) {
    if (!hasField(fields, field.number)) clearField(task, field);
  }
  return task;
}
