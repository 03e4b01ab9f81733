import { WireType } from "@bufbuild/protobuf/wire";

/**
 * A protobuf wire-format writer into one growing buffer, for the hot paths
 * that hand-encode (list and get responses). @bufbuild/protobuf's
 * BinaryWriter allocates a chunk per string, per double and per nested
 * message (fork/join copies each level again); on a page of tasks that is
 * most of the encoding time. Here a nested message reserves one byte for its
 * length and moves its content only in the rare case that the length needs
 * more than one byte.
 */
export class WireWriter {
  private buf: Buffer;
  private view: DataView;
  pos = 0;

  constructor(initialSize = 4096) {
    this.buf = Buffer.allocUnsafe(initialSize);
    this.view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  }

  /** Starts over, keeping the buffer. */
  reset(): void {
    this.pos = 0;
  }

  /** A copy of the bytes written so far. */
  finish(): Uint8Array {
    return Uint8Array.prototype.slice.call(this.buf, 0, this.pos);
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
    this.view = new DataView(next.buffer, next.byteOffset, next.byteLength);
  }

  tag(no: number, wireType: WireType): this {
    return this.uint32(((no << 3) | wireType) >>> 0);
  }

  /** An unsigned varint below 2^32. */
  uint32(value: number): this {
    this.ensure(5);
    const buf = this.buf;
    let pos = this.pos;
    while (value > 0x7f) {
      buf[pos++] = (value & 0x7f) | 0x80;
      value >>>= 7;
    }
    buf[pos++] = value;
    this.pos = pos;
    return this;
  }

  /** An int32 (enums too): negative values take ten bytes, sign-extended, as protobuf requires. */
  int32(value: number): this {
    return value >= 0 ? this.uint32(value) : this.int64(value);
  }

  /** An int64 given as a safe integer. */
  int64(value: number): this {
    if (value >= 0 && value <= 0xffffffff) return this.uint32(value);
    this.ensure(10);
    // Two's complement over 64 bits, seven bits at a time.
    let v = BigInt.asUintN(64, BigInt(value));
    const buf = this.buf;
    while (v > 0x7fn) {
      buf[this.pos++] = Number(v & 0x7fn) | 0x80;
      v >>= 7n;
    }
    buf[this.pos++] = Number(v);
    return this;
  }

  bool(value: boolean): this {
    this.ensure(1);
    this.buf[this.pos++] = value ? 1 : 0;
    return this;
  }

  double(value: number): this {
    this.ensure(8);
    this.view.setFloat64(this.pos, value, true);
    this.pos += 8;
    return this;
  }

  /** A length-prefixed UTF-8 string (lone surrogates become U+FFFD, as with TextEncoder). */
  string(value: string): this {
    const n = value.length;
    if (n < 43) {
      // At most 126 bytes: the length fits one byte. Plain ASCII is copied here,
      // cheaper than a call into the encoder.
      this.ensure(1 + n * 3);
      const buf = this.buf;
      const start = this.pos + 1;
      let pos = start;
      for (let i = 0; i < n; i++) {
        const c = value.charCodeAt(i);
        if (c >= 0x80) {
          pos = start + buf.write(value, start, "utf8");
          break;
        }
        buf[pos++] = c;
      }
      buf[this.pos] = pos - start;
      this.pos = pos;
      return this;
    }
    const bytes = Buffer.byteLength(value, "utf8");
    this.uint32(bytes);
    this.ensure(bytes);
    this.buf.write(value, this.pos, bytes, "utf8");
    this.pos += bytes;
    return this;
  }

  /** Raw bytes, as they are. */
  raw(bytes: Uint8Array): this {
    this.ensure(bytes.length);
    this.buf.set(bytes, this.pos);
    this.pos += bytes.length;
    return this;
  }

  /** A proto3 string field: left out when empty. */
  stringField(no: number, value: string): this {
    return value === "" ? this : this.tag(no, WireType.LengthDelimited).string(value);
  }

  /** A Timestamp or Duration field ({ int64 seconds = 1; int32 nanos = 2; }) of `ms` milliseconds, always written. */
  secondsNanosField(no: number, ms: number): this {
    const seconds = Math.floor(ms / 1000);
    const nanos = (ms % 1000) * 1_000_000;
    this.tag(no, WireType.LengthDelimited);
    const start = this.begin();
    if (seconds !== 0) this.tag(1, WireType.Varint).int64(seconds);
    if (nanos !== 0) this.tag(2, WireType.Varint).int32(nanos);
    return this.end(start);
  }

  /** Starts a length-delimited value; returns what `end` needs. */
  begin(): number {
    this.ensure(1);
    return this.pos++;
  }

  /** Ends the length-delimited value `begin` started, writing its length before it. */
  end(start: number): this {
    const length = this.pos - start - 1;
    if (length < 0x80) {
      this.buf[start] = length;
      return this;
    }
    let size = 1;
    for (let v = length >>> 7; v > 0; v >>>= 7) size++;
    this.ensure(size - 1);
    this.buf.copy(this.buf, start + size, start + 1, this.pos);
    this.pos += size - 1;
    let v = length;
    let pos = start;
    while (v > 0x7f) {
      this.buf[pos++] = (v & 0x7f) | 0x80;
      v >>>= 7;
    }
    this.buf[pos] = v;
    return this;
  }
}
