import http from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSettings } from "../src/config.js";
import { startTestServer, type TestServer } from "./support/test-server.js";

/** The browser's side of CORS, spoken by hand: what a preflight and a call from a page get back. */
function request(url: string, path: string, init: { method: string; headers: Record<string, string>; body?: string }) {
  return new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }>((resolve, reject) => {
    const req = http.request(`${url}${path}`, { method: init.method, headers: init.headers, agent: false }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (body += chunk));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end(init.body);
  });
}

const DASHBOARD = "https://dashboard.example.com";
const GET_TASK = "/taskstream.v1.TaskService/GetTask";
const preflight = (origin: string, extra: Record<string, string> = {}) => ({
  method: "OPTIONS",
  headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": "content-type,connect-protocol-version", ...extra },
});
const jsonCall = (origin?: string) => ({
  method: "POST",
  headers: { "content-type": "application/json", ...(origin ? { origin } : {}) },
  body: '{"taskId":"no-such-task"}',
});

describe("--cors-origins", () => {
  it("takes origins as browsers send them, or *, and refuses anything else naming the setting", () => {
    expect(loadSettings([], {}).corsOrigins).toEqual([]);
    expect(loadSettings(["--cors-origins", "https://a.example, http://127.0.0.1:5173"], {}).corsOrigins).toEqual(["https://a.example", "http://127.0.0.1:5173"]);
    expect(loadSettings([], { TASKSTREAM_CORS_ORIGINS: "*" }).corsOrigins).toEqual(["*"]);
    for (const bad of ["https://a.example/", "https://a.example/app", "a.example", "HTTPS://A.EXAMPLE", "*,https://a.example"]) {
      expect(() => loadSettings(["--cors-origins", bad], {}), bad).toThrow("--cors-origins / TASKSTREAM_CORS_ORIGINS");
    }
  });
});

describe("CORS for listed origins", () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer("sqlite", { corsOrigins: [DASHBOARD], shutdownGraceMs: 300 });
  });
  afterAll(() => t?.close());

  it("answers a listed origin's preflight with what Connect and gRPC-Web send", async () => {
    const res = await request(t.server.url, GET_TASK, preflight(DASHBOARD, { "access-control-request-private-network": "true" }));
    expect(res.status).toBe(204);
    expect(res.headers).toMatchObject({
      "access-control-allow-origin": DASHBOARD,
      "access-control-allow-methods": "POST, GET",
      "access-control-allow-headers": "content-type,connect-protocol-version",
      "access-control-allow-private-network": "true",
      "access-control-max-age": "7200",
    });
    expect(res.headers.vary).toContain("Origin");
  });

  it("refuses another origin's preflight, so its browser sends nothing", async () => {
    const res = await request(t.server.url, GET_TASK, preflight("https://elsewhere.example"));
    expect(res.status).toBe(403);
    expect(res.headers["access-control-allow-origin"]).toBeUndefined();
    expect(res.body).toContain("--cors-origins");
  });

  it("lets a listed origin's page read the answer, errors and gRPC-Web status included", async () => {
    const res = await request(t.server.url, GET_TASK, jsonCall(DASHBOARD));
    expect(res.status).toBe(404);
    expect(JSON.parse(res.body)).toMatchObject({ code: "not_found" });
    expect(res.headers["access-control-allow-origin"]).toBe(DASHBOARD);
    expect(res.headers["access-control-expose-headers"]?.toLowerCase().split(", ")).toEqual(
      expect.arrayContaining(["grpc-status", "grpc-message", "grpc-status-details-bin"]),
    );
    expect(res.headers.vary).toBe("Origin");
    const other = await request(t.server.url, GET_TASK, jsonCall("https://elsewhere.example"));
    expect(other.status).toBe(404);
    expect(other.headers["access-control-allow-origin"]).toBeUndefined();
  });

  it("leaves calls that name no origin (servers, curl) as they were", async () => {
    const res = await request(t.server.url, GET_TASK, jsonCall());
    expect(res.status).toBe(404);
    expect(res.headers["access-control-allow-origin"]).toBeUndefined();
  });
});

describe("CORS off (the default) and for every origin", () => {
  it("answers no preflight when no origin is listed, and any origin with *", async () => {
    const closed = await startTestServer("sqlite", { shutdownGraceMs: 300 });
    const open = await startTestServer("sqlite", { corsOrigins: ["*"], shutdownGraceMs: 300 });
    try {
      const refused = await request(closed.server.url, GET_TASK, preflight(DASHBOARD));
      expect(refused.headers["access-control-allow-origin"]).toBeUndefined();
      expect(refused.status).toBeGreaterThanOrEqual(400);
      const anyOrigin = await request(open.server.url, GET_TASK, preflight("https://anything.example"));
      expect(anyOrigin.status).toBe(204);
      expect(anyOrigin.headers["access-control-allow-origin"]).toBe("*");
      const call = await request(open.server.url, GET_TASK, jsonCall("https://anything.example"));
      expect(call.headers["access-control-allow-origin"]).toBe("*");
      expect(call.headers.vary).toBeUndefined();
    } finally {
      await Promise.all([closed.close(), open.close()]);
    }
  });
});
