import * as grpc from "@grpc/grpc-js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { fromBinary, toBinary, type DescMessage, type DescService, type MessageInitShape, type MessageShape, create } from "@bufbuild/protobuf";

type UnaryMethods<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends { input: infer I extends DescMessage; output: infer O extends DescMessage }
    ? (request: MessageInitShape<I>, options?: { deadlineMs?: number; metadata?: grpc.Metadata }) => Promise<MessageShape<O>>
    : never;
};

/**
 * A @grpc/grpc-js client for a protobuf-es service, so tests prove interop with
 * the canonical gRPC implementation. Unary methods return promises.
 */
export function grpcJsClient<S extends DescService>(service: S, address: string): { client: UnaryMethods<S>; raw: grpc.Client; close(): void } {
  const definition: Record<string, grpc.MethodDefinition<MessageShape<DescMessage>, MessageShape<DescMessage>>> = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: (m: MessageShape<DescMessage>) => Buffer.from(toBinary(method.input, m)),
      requestDeserialize: (b: Buffer) => fromBinary(method.input, b),
      responseSerialize: (m: MessageShape<DescMessage>) => Buffer.from(toBinary(method.output, m)),
      responseDeserialize: (b: Buffer) => fromBinary(method.output, b),
    };
  }
  const Ctor = grpc.makeGenericClientConstructor(definition, service.typeName);
  const raw = new Ctor(address, grpc.credentials.createInsecure());
  const client = {} as Record<string, unknown>;
  for (const method of service.methods) {
    if (method.methodKind !== "unary") continue;
    client[method.localName] = (request: MessageInitShape<DescMessage>, options: { deadlineMs?: number; metadata?: grpc.Metadata } = {}) =>
      new Promise((resolve, reject) => {
        const callOptions = options.deadlineMs ? { deadline: Date.now() + options.deadlineMs } : {};
        (raw as unknown as Record<string, Function>)[method.localName](
          create(method.input, request),
          options.metadata ?? new grpc.Metadata(),
          callOptions,
          (err: grpc.ServiceError | null, response: unknown) => (err ? reject(err) : resolve(response)),
        );
      });
  }
  return { client: client as UnaryMethods<S>, raw, close: () => raw.close() };
}

/** The ErrorInfo reason a grpc-js error carries in its grpc-status-details-bin trailer. */
export function grpcJsErrorReason(err: unknown): string | undefined {
  const details = (err as grpc.ServiceError).metadata?.get("grpc-status-details-bin")[0];
  return details ? statusDetailsReason(details as Buffer) : undefined;
}

/** The ErrorInfo reason in a grpc-status-details-bin trailer's bytes (a google.rpc.Status). */
export function statusDetailsReason(details: Uint8Array): string | undefined {
  const status = fromBinary(StatusSchema, details);
  const info = status.details.find((any) => any.typeUrl.endsWith("/google.rpc.ErrorInfo"));
  return info ? fromBinary(ErrorInfoSchema, info.value).reason : undefined;
}
