import { createHash } from "node:crypto";
import { clone, toBinary, type DescMessage, type MessageShape } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { invalidArgument, taskstreamError } from "../errors.js";

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 1000;

/** What a page token remembers: where the last page ended, and the first page's total. */
export interface PagePosition<P> {
  position: P;
  total: number;
}

/** AIP-158 page size: 0 means the default, larger than the maximum is capped, negative is refused. */
export function pageSize(requested: number): number {
  if (requested < 0) throw invalidArgument("page_size", "must not be negative");
  if (requested === 0) return DEFAULT_PAGE_SIZE;
  return Math.min(requested, MAX_PAGE_SIZE);
}

/**
 * The request with its paging fields cleared, hashed: a token is valid only
 * for the request that produced it.
 */
export function requestFingerprint<Desc extends DescMessage>(
  schema: Desc,
  request: MessageShape<Desc>,
): string {
  const bare = clone(schema, request) as Record<string, unknown>;
  bare.pageToken = "";
  bare.pageSize = 0;
  const bytes = toBinary(schema, bare as MessageShape<Desc>);
  return createHash("sha256").update(bytes).digest("base64url").slice(0, 22);
}

/** An opaque token: base64url JSON of the fingerprint, position and total. */
export function encodePageToken<P>(fingerprint: string, page: PagePosition<P>): string {
  return Buffer.from(JSON.stringify({ f: fingerprint, p: page.position, t: page.total })).toString("base64url");
}

/** Decodes a token, refusing garbage (INVALID_PAGE_TOKEN) and other requests' tokens (PAGE_TOKEN_MISMATCH). */
export function decodePageToken<P>(
  token: string,
  fingerprint: string,
  isPosition: (value: unknown) => value is P,
): PagePosition<P> {
  let decoded: { f?: unknown; p?: unknown; t?: unknown };
  try {
    decoded = JSON.parse(Buffer.from(token, "base64url").toString("utf8"));
  } catch {
    throw badToken();
  }
  if (typeof decoded !== "object" || decoded === null || !isPosition(decoded.p) || typeof decoded.t !== "number") {
    throw badToken();
  }
  if (decoded.f !== fingerprint) {
    throw taskstreamError(
      Code.InvalidArgument,
      "PAGE_TOKEN_MISMATCH",
      "page_token was issued for a different request; repeat the same filter and order",
    );
  }
  return { position: decoded.p, total: decoded.t };
}

function badToken() {
  return taskstreamError(Code.InvalidArgument, "INVALID_PAGE_TOKEN", "page_token is not a token this server issued");
}
