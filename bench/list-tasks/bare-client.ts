import { connect, type ClientHttp2Session } from "node:http2";

/**
 * A gRPC client reduced to HTTP/2: it sends a unary call's request bytes and
 * waits for the whole response, decoding nothing. Its time is the server's
 * and the network's share of a call; a typed client adds gunzip and decoding.
 */
export class BareGrpcClient {
  private readonly session: ClientHttp2Session;

  constructor(url: string) {
    this.session = connect(url);
  }

  /** Resolves with the response's bytes on the wire once its trailers say OK. */
  call(path: string, request: Uint8Array, acceptGzip: boolean): Promise<number> {
    const frame = Buffer.alloc(5 + request.length);
    frame.writeUInt32BE(request.length, 1);
    frame.set(request, 5);
    return new Promise((resolve, reject) => {
      const stream = this.session.request({
        ":method": "POST",
        ":path": path,
        "content-type": "application/grpc+proto",
        te: "trailers",
        ...(acceptGzip ? { "grpc-accept-encoding": "gzip" } : {}),
      });
      let bytes = 0;
      let status: unknown;
      stream.on("response", (headers) => (status = headers["grpc-status"]));
      stream.on("trailers", (trailers) => (status = trailers["grpc-status"]));
      stream.on("data", (chunk: Buffer) => (bytes += chunk.length));
      stream.on("end", () => (status === "0" ? resolve(bytes) : reject(new Error(`${path}: grpc-status ${String(status)}`))));
      stream.on("error", reject);
      stream.end(frame);
    });
  }

  close(): void {
    this.session.close();
  }
}
