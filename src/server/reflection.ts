import { toBinary, type DescFile } from "@bufbuild/protobuf";
import { nestedTypes } from "@bufbuild/protobuf/reflect";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, type ConnectRouter } from "@connectrpc/connect";
import * as v1 from "../../gen/grpc/reflection/v1/reflection_pb.js";
import * as v1alpha from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";

/** What a client may ask; v1 and v1alpha differ only in message type names. */
type Query = v1.ServerReflectionRequest["messageRequest"] | v1alpha.ServerReflectionRequest["messageRequest"];

/** A reply as a plain init object, which fits both versions' response messages. */
type Answer =
  | { case: "fileDescriptorResponse"; value: { fileDescriptorProto: Uint8Array[] } }
  | { case: "allExtensionNumbersResponse"; value: { baseTypeName: string; extensionNumber: number[] } }
  | { case: "listServicesResponse"; value: { service: { name: string }[] } }
  | { case: "errorResponse"; value: { errorCode: number; errorMessage: string } };

/** Lookups built once per server; reflection clients ask the same questions on every connection. */
interface ReflectionIndex {
  services: string[];
  byFilename: Map<string, DescFile>;
  bySymbol: Map<string, DescFile>;
  /** Extendee message name to extension number to the file declaring it; every known message has an entry. */
  extensions: Map<string, Map<number, DescFile>>;
  encoded: Map<DescFile, Uint8Array>;
}

/**
 * Serves gRPC server reflection (grpc.reflection.v1 and the v1alpha that older
 * clients such as grpcurl and buf curl fall back to), so tools can call this
 * server without a copy of its .proto files. Describes the services in `files`
 * and the reflection services themselves; answers include every file they import.
 */
export function registerReflection(router: ConnectRouter, files: DescFile[]): void {
  const index = buildIndex([...files, v1.file_grpc_reflection_v1_reflection, v1alpha.file_grpc_reflection_v1alpha_reflection]);
  router.service(v1.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) yield reply(index, request);
    },
  });
  router.service(v1alpha.ServerReflection, {
    async *serverReflectionInfo(requests) {
      for await (const request of requests) yield reply(index, request);
    },
  });
}

function reply<R extends { host: string; messageRequest: Query }>(index: ReflectionIndex, request: R) {
  return { validHost: request.host, originalRequest: request, messageResponse: answer(index, request.messageRequest) };
}

function answer(index: ReflectionIndex, query: Query): Answer {
  switch (query.case) {
    case "listServices":
      return { case: "listServicesResponse", value: { service: index.services.map((name) => ({ name })) } };
    case "fileByFilename":
      return fileAnswer(index, index.byFilename.get(query.value), `file "${query.value}"`);
    case "fileContainingSymbol":
      return fileAnswer(index, index.bySymbol.get(query.value), `symbol "${query.value}"`);
    case "fileContainingExtension": {
      const { containingType, extensionNumber } = query.value;
      const file = index.extensions.get(containingType)?.get(extensionNumber);
      return fileAnswer(index, file, `extension ${extensionNumber} of "${containingType}"`);
    }
    case "allExtensionNumbersOfType": {
      const numbers = index.extensions.get(query.value);
      if (!numbers) return notFound(`message type "${query.value}"`);
      return { case: "allExtensionNumbersResponse", value: { baseTypeName: query.value, extensionNumber: [...numbers.keys()] } };
    }
    default:
      return { case: "errorResponse", value: { errorCode: Code.InvalidArgument, errorMessage: "empty reflection request" } };
  }
}

/**
 * The file and everything it imports, transitively, each once; clients need them
 * all to resolve types. Imports come before their importers, the order a
 * FileDescriptorSet needs, so the requested file is last.
 */
function fileAnswer(index: ReflectionIndex, file: DescFile | undefined, what: string): Answer {
  if (!file) return notFound(what);
  const closure = new Set<DescFile>();
  const seen = new Set<DescFile>();
  const visit = (f: DescFile) => {
    if (seen.has(f)) return;
    seen.add(f);
    f.dependencies.forEach(visit);
    closure.add(f);
  };
  visit(file);
  return { case: "fileDescriptorResponse", value: { fileDescriptorProto: [...closure].map((f) => index.encoded.get(f)!) } };
}

function notFound(what: string): Answer {
  return { case: "errorResponse", value: { errorCode: Code.NotFound, errorMessage: `${what} not found` } };
}

function buildIndex(files: DescFile[]): ReflectionIndex {
  const index: ReflectionIndex = { services: [], byFilename: new Map(), bySymbol: new Map(), extensions: new Map(), encoded: new Map() };
  for (const file of files) for (const service of file.services) index.services.push(service.typeName);
  const add = (file: DescFile) => {
    if (index.encoded.has(file)) return;
    index.encoded.set(file, toBinary(FileDescriptorProtoSchema, file.proto));
    index.byFilename.set(file.proto.name, file);
    indexSymbols(index, file);
    file.dependencies.forEach(add);
  };
  files.forEach(add);
  return index;
}

/** Types, service methods and message fields, the symbols grpcurl and buf curl look up. */
function indexSymbols(index: ReflectionIndex, file: DescFile): void {
  for (const type of nestedTypes(file)) {
    index.bySymbol.set(type.typeName, file);
    if (type.kind === "service") for (const method of type.methods) index.bySymbol.set(`${type.typeName}.${method.name}`, file);
    if (type.kind === "message") {
      for (const field of type.fields) index.bySymbol.set(`${type.typeName}.${field.name}`, file);
      extensionsOf(index, type.typeName);
    }
    if (type.kind === "extension") extensionsOf(index, type.extendee.typeName).set(type.number, file);
  }
}

/** The extensions of a message by number, created empty on first use. */
function extensionsOf(index: ReflectionIndex, typeName: string): Map<number, DescFile> {
  let numbers = index.extensions.get(typeName);
  if (!numbers) index.extensions.set(typeName, (numbers = new Map()));
  return numbers;
}
