import type { JsonObject, JsonValue } from "@bufbuild/protobuf";
import { WireType } from "@bufbuild/protobuf/wire";
import type { WireWriter } from "./wire-writer.js";

/**
 * JSON straight to the protobuf wire format of google.protobuf.Struct and
 * google.protobuf.Value, without building their messages: protobuf-es makes
 * a message per value and encodes it by reflection, which cost most of a
 * list response's time.
 *
 *   Struct    { map<string, Value> fields = 1; }   (entry: key = 1, value = 2)
 *   Value     { oneof kind { NullValue null_value = 1; double number_value = 2;
 *               string string_value = 3; bool bool_value = 4;
 *               Struct struct_value = 5; ListValue list_value = 6; } }
 *   ListValue { repeated Value values = 1; }
 *
 * Decoding the bytes gives what `fromJson(ValueSchema, value)` (or a Struct
 * field set to the object) gives: oneof members are written even when zero,
 * as protobuf-es writes them, and a map entry always carries its key.
 */

const LEN = WireType.LengthDelimited;
const TAG_ENTRY = (1 << 3) | LEN;
const TAG_KEY = (1 << 3) | LEN;
const TAG_VALUE = (2 << 3) | LEN;
const TAG_NULL = (1 << 3) | WireType.Varint;
const TAG_NUMBER = (2 << 3) | WireType.Bit64;
const TAG_STRING = (3 << 3) | LEN;
const TAG_BOOL = (4 << 3) | WireType.Varint;
const TAG_STRUCT = (5 << 3) | LEN;
const TAG_LIST = (6 << 3) | LEN;
const TAG_LIST_ITEM = (1 << 3) | LEN;

/** Writes the content (no tag, no length) of a Struct holding `object`. */
export function writeStructContent(w: WireWriter, object: JsonObject): void {
  for (const key in object) {
    if (!Object.prototype.hasOwnProperty.call(object, key)) continue;
    const value = object[key];
    // JSON text never gives undefined; skip it as JSON.stringify would.
    if (value === undefined) continue;
    w.uint32(TAG_ENTRY);
    const entry = w.begin();
    w.uint32(TAG_KEY).string(key);
    w.uint32(TAG_VALUE);
    const start = w.begin();
    writeValueContent(w, value);
    w.end(start);
    w.end(entry);
  }
}

/** Writes the content (no tag, no length) of a Value holding `value`. */
export function writeValueContent(w: WireWriter, value: JsonValue): void {
  switch (typeof value) {
    case "string":
      w.uint32(TAG_STRING).string(value);
      return;
    case "number":
      w.uint32(TAG_NUMBER).double(value);
      return;
    case "boolean":
      w.uint32(TAG_BOOL).bool(value);
      return;
    case "object": {
      if (value === null) {
        w.uint32(TAG_NULL).uint32(0);
        return;
      }
      if (Array.isArray(value)) {
        w.uint32(TAG_LIST);
        const list = w.begin();
        for (const item of value) {
          w.uint32(TAG_LIST_ITEM);
          const start = w.begin();
          writeValueContent(w, item);
          w.end(start);
        }
        w.end(list);
        return;
      }
      w.uint32(TAG_STRUCT);
      const start = w.begin();
      writeStructContent(w, value);
      w.end(start);
      return;
    }
  }
  throw new Error(`not a JSON value: ${typeof value}`);
}

/** Field `no` as a Struct message holding the JSON object `object`. */
export function writeStructField(w: WireWriter, no: number, object: JsonObject): void {
  w.tag(no, LEN);
  const start = w.begin();
  writeStructContent(w, object);
  w.end(start);
}

/** Field `no` as a Value message holding `value`. */
export function writeValueField(w: WireWriter, no: number, value: JsonValue): void {
  w.tag(no, LEN);
  const start = w.begin();
  writeValueContent(w, value);
  w.end(start);
}
