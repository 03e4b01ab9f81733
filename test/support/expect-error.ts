import { Code, ConnectError } from "@connectrpc/connect";
import type { ServiceError } from "@grpc/grpc-js";
import { expect } from "vitest";
import { errorReason } from "../../src/errors.js";
import { grpcJsErrorReason } from "./grpc-js-client.js";

/** Awaits a call that must fail, and checks its status code and ErrorInfo reason. */
export async function expectError(call: Promise<unknown>, code: Code, reason?: string): Promise<ConnectError> {
  const err = await call.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, "the call should have failed").toBeDefined();
  const connectErr = ConnectError.from(err);
  expect(Code[connectErr.code], connectErr.message).toBe(Code[code]);
  if (reason !== undefined) expect(errorReason(connectErr)).toBe(reason);
  return connectErr;
}

/** The same for a @grpc/grpc-js call, whose errors carry numeric codes and a details trailer. */
export async function expectGrpcJsError(call: Promise<unknown>, code: Code, reason?: string): Promise<void> {
  const err = (await call.then(
    () => undefined,
    (e: unknown) => e,
  )) as ServiceError | undefined;
  expect(err, "the call should have failed").toBeDefined();
  expect(Code[err!.code], err!.details).toBe(Code[code]);
  if (reason !== undefined) expect(grpcJsErrorReason(err)).toBe(reason);
}
