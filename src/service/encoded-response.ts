import type { HandlerContext } from "@connectrpc/connect";
import { create, type DescField, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import { WireWriter } from "../storage/wire-writer.js";

/**
 * Responses whose biggest field is sent as bytes encoded once, not encoded by
 * protobuf-es at every call: StreamTasks sends each event's stored bytes,
 * GetTask and ListTasks tasks written straight from their rows.
 *
 * The bytes ride in the message as unknown fields, which protobuf-es writes
 * out verbatim after the known ones: on the wire the message is exactly the
 * one with that field set (fields may come in any order, and repeated fields
 * keep theirs). JSON codecs drop unknown fields, so a JSON call gets the
 * message with the field decoded instead: ask `speaksJson` first.
 */

/**
 * Whether the call speaks JSON (Connect JSON, gRPC-Web JSON, gRPC JSON):
 * judged by its content type, or for a Connect GET, which has none, by the
 * codec its query names.
 */
export function speaksJson(ctx: Pick<HandlerContext, "requestMethod" | "requestHeader" | "url">): boolean {
  if (ctx.requestMethod === "GET") return new URL(ctx.url, "http://localhost").searchParams.get("encoding") === "json";
  return (ctx.requestHeader.get("content-type") ?? "").includes("json");
}

// One writer for every response: encoding is synchronous, and its buffer,
// once grown to a large page, stays grown.
const writer = new WireWriter(64 * 1024);

/**
 * A `schema` message made of `init`, and of `field` (a message field,
 * repeated or not, possibly in a oneof) holding one message per item, each
 * written by `write` as its content (no tag, no length).
 */
export function withEncodedField<Desc extends DescMessage, T>(
  schema: Desc,
  init: MessageInitShape<Desc>,
  field: DescField,
  items: readonly T[],
  write: (w: WireWriter, item: T) => void,
): MessageShape<Desc> {
  if (field.parent.typeName !== schema.typeName || field.fieldKind === "scalar" || field.fieldKind === "map") {
    throw new Error(`${field.toString()} is not a message field of ${schema.typeName}`);
  }
  const w = writer;
  w.reset();
  const ends: number[] = [];
  for (const item of items) {
    const start = w.begin();
    write(w, item);
    w.end(start);
    ends.push(w.pos);
  }
  // Every item's length prefix and content, in one copy of the writer's bytes.
  const bytes = w.finish();
  const message = create(schema, init);
  let from = 0;
  message.$unknown = ends.map((to) => {
    const data = bytes.subarray(from, to);
    from = to;
    return { no: field.number, wireType: WireType.LengthDelimited, data };
  });
  return message;
}

/** A message content already encoded, for `withEncodedField`. */
export function rawBytes(w: WireWriter, bytes: Uint8Array): void {
  w.raw(bytes);
}
