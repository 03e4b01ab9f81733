import type { ConnectRouter } from "@connectrpc/connect";
import { file_health_v1_health } from "../../gen/health/v1/health_pb.js";
import { file_taskstream_v1_task_service, TaskService } from "../../gen/taskstream/v1/task_service_pb.js";
import { file_taskstream_v1_worker_service, WorkerService } from "../../gen/taskstream/v1/worker_service_pb.js";
import type { ServiceDeps } from "../service/deps.js";
import { taskService } from "../service/task-service.js";
import { workerService } from "../service/worker-service.js";
import { registerHealth, type HealthStatus } from "./health.js";
import { registerReflection } from "./reflection.js";

/** The services reflection describes. */
export const SERVED_FILES = [file_taskstream_v1_task_service, file_taskstream_v1_worker_service, file_health_v1_health];

/** Every service on one router: taskstream's own, health and reflection. */
export function routes(deps: ServiceDeps, health: HealthStatus) {
  return (router: ConnectRouter) => {
    router.service(TaskService, taskService(deps));
    router.service(WorkerService, workerService(deps));
    registerHealth(router, health);
    registerReflection(router, SERVED_FILES);
  };
}
