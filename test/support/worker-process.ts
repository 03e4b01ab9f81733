// A worker in its own process, for tests that kill one mid-task: it claims one
// task of the tool over @grpc/grpc-js, prints {taskId, leaseId} as a JSON line,
// then heartbeats until it is killed.
import { WorkerService } from "../../gen/taskstream/v1/worker_service_pb.js";
import { grpcJsClient } from "./grpc-js-client.js";

const [address, toolName, leaseMs] = process.argv.slice(2);
const { client } = grpcJsClient(WorkerService, address);
const leaseDuration = { nanos: (Number(leaseMs) % 1000) * 1_000_000, seconds: BigInt(Math.floor(Number(leaseMs) / 1000)) };
const { tasks } = await client.claimTasks({ workerId: `pid-${process.pid}`, toolNames: [toolName], wait: { seconds: 10n }, leaseDuration });
const [{ task, lease }] = tasks;
process.stdout.write(JSON.stringify({ taskId: task!.taskId, leaseId: lease!.leaseId }) + "\n");
setInterval(() => {
  client.heartbeat({ taskId: task!.taskId, leaseId: lease!.leaseId, leaseDuration }).catch(() => {});
}, Number(leaseMs) / 4);
