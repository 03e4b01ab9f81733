import { cors } from "@connectrpc/connect";
import type { Handler } from "./listener.js";

/** What a browser script may read of a response: the gRPC-Web status and Connect's encodings. */
const EXPOSED_HEADERS = cors.exposedHeaders.join(", ");
const ALLOWED_METHODS = cors.allowedMethods.join(", ");
const ALLOWED_HEADERS = cors.allowedHeaders.join(", ");
/** Browsers cap this (Chromium at 2 h); a preflight per method and origin every 2 h at most. */
const PREFLIGHT_MAX_AGE_S = "7200";

/**
 * Lets pages from the configured origins call the service from a browser
 * (Connect-Web and gRPC-Web clients on a dashboard served elsewhere): answers
 * CORS preflights and tells the browser which response headers its script may
 * read. With no origins configured, the handler is returned unchanged and
 * browsers keep to the same origin. "*" allows every origin.
 *
 * CORS is the browser's rule, not access control: a call from an origin not
 * allowed still reaches the service (a browser only withholds the answer from
 * the page), and any non-browser client calls freely.
 */
export function withCors(handler: Handler, origins: readonly string[]): Handler {
  if (origins.length === 0) return handler;
  const anyOrigin = origins.includes("*");
  const allowed = new Set(origins);
  return (req, res) => {
    const origin = req.headers.origin;
    if (typeof origin !== "string") return handler(req, res);
    const permitted = anyOrigin || allowed.has(origin);
    if (req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined) {
      if (!permitted) {
        res.writeHead(403, { "content-type": "text/plain", vary: "Origin" });
        res.end(`origin ${origin} is not allowed to call this service (see --cors-origins)\n`);
        return;
      }
      res.writeHead(204, preflightHeaders(req.headers, anyOrigin ? "*" : origin));
      res.end();
      return;
    }
    if (permitted) {
      res.setHeader("access-control-allow-origin", anyOrigin ? "*" : origin);
      res.setHeader("access-control-expose-headers", EXPOSED_HEADERS);
    }
    // The answer depends on the origin unless every origin gets the same one.
    if (!anyOrigin) res.setHeader("vary", "Origin");
    handler(req, res);
  };
}

type RequestHeaders = Record<string, string | string[] | undefined>;

function preflightHeaders(request: RequestHeaders, allowOrigin: string): Record<string, string> {
  // The page's own headers (a tracing or auth header its app adds) are let
  // through as asked: which origins may call is what this guards.
  const asked = request["access-control-request-headers"];
  const headers: Record<string, string> = {
    "access-control-allow-origin": allowOrigin,
    "access-control-allow-methods": ALLOWED_METHODS,
    "access-control-allow-headers": typeof asked === "string" && asked.trim() !== "" ? asked : ALLOWED_HEADERS,
    "access-control-max-age": PREFLIGHT_MAX_AGE_S,
    vary: "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
  };
  // Chromium asks this before a public page may call a server on a private
  // network, as a dashboard calling an in-cluster service does.
  if (request["access-control-request-private-network"] === "true") headers["access-control-allow-private-network"] = "true";
  return headers;
}
