import { execFile } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadSettings } from "../src/config.js";
import { cleanEnv, runCli } from "./support/cli-process.js";

// TLS settings are checked before anything starts: half a TLS configuration,
// or files that cannot be used, are a configuration error, never plaintext
// served by mistake, and never a stack trace.

const run = promisify(execFile);

describe("TLS settings", () => {
  let dir: string;
  let cert: string;
  let key: string;
  let otherKey: string;
  const children: ReturnType<typeof runCli>[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "taskstream-tls-settings-"));
    cert = join(dir, "cert.pem");
    key = join(dir, "key.pem");
    otherKey = join(dir, "other-key.pem");
    await run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-subj", "/CN=localhost", "-days", "1"]);
    await run("openssl", ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", otherKey]);
    writeFileSync(join(dir, "garbage.pem"), "not a certificate\n");
    mkdirSync(join(dir, "a-directory"));
  });
  afterAll(() => {
    for (const child of children) child.kill();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Runs `serve` with these flags and environment; expects a refusal before anything starts. */
  async function expectRefused(flags: string[], env: Record<string, string> = {}): Promise<string> {
    const database = join(dir, `never-${Math.random().toString(36).slice(2)}.db`);
    const cli = runCli(["serve", "--port", "0", "--database", database, ...flags], { cwd: dir, env: cleanEnv(env) });
    children.push(cli);
    // A server that starts anyway would serve until killed.
    const timer = setTimeout(cli.kill, 15_000);
    const exit = await cli.exited;
    clearTimeout(timer);
    expect(exit.code, cli.stderr()).toBe(2);
    expect(cli.logs.map((l) => l.msg)).not.toContain("taskstream listening");
    // Refused before storage was touched.
    expect(existsSync(database)).toBe(false);
    // One clear line, no stack trace.
    expect(cli.stderr()).not.toMatch(/^\s+at /m);
    return cli.stderr();
  }

  it("refuses --tls-cert without --tls-key, and the other way round, through flags or environment", async () => {
    const [certOnly, keyOnly, envCertOnly, mixed] = await Promise.all([
      expectRefused(["--tls-cert", cert]),
      expectRefused(["--tls-key", key]),
      expectRefused([], { TASKSTREAM_TLS_CERT: cert }),
      expectRefused(["--tls-key", key], { TASKSTREAM_TLS_KEY: "" }),
    ]);
    for (const stderr of [certOnly, envCertOnly]) expect(stderr).toContain("--tls-key / TASKSTREAM_TLS_KEY is not set");
    for (const stderr of [keyOnly, mixed]) expect(stderr).toContain("--tls-cert / TASKSTREAM_TLS_CERT is not set");
    for (const stderr of [certOnly, keyOnly]) expect(stderr).toContain("both or neither");
  });

  it("refuses certificate and key files it cannot read, naming the setting and the file", async () => {
    const missing = join(dir, "missing.pem");
    const [missingCert, missingKey, directory] = await Promise.all([
      expectRefused(["--tls-cert", missing, "--tls-key", key]),
      expectRefused(["--tls-cert", cert, "--tls-key", missing]),
      expectRefused(["--tls-cert", cert, "--tls-key", join(dir, "a-directory")]),
    ]);
    expect(missingCert).toContain(`--tls-cert / TASKSTREAM_TLS_CERT: cannot read "${missing}"`);
    expect(missingCert).toContain("ENOENT");
    expect(missingKey).toContain(`--tls-key / TASKSTREAM_TLS_KEY: cannot read "${missing}"`);
    expect(directory).toContain("--tls-key / TASKSTREAM_TLS_KEY: cannot read");
    expect(directory).toContain("EISDIR");
  });

  it("refuses files that are not a PEM certificate and its matching key", async () => {
    const [notPem, mismatched] = await Promise.all([
      expectRefused(["--tls-cert", join(dir, "garbage.pem"), "--tls-key", key]),
      expectRefused(["--tls-cert", cert, "--tls-key", otherKey]),
    ]);
    for (const stderr of [notPem, mismatched]) expect(stderr).toContain("--tls-cert / --tls-key: not a usable PEM certificate and private key");
  });

  it("accepts both files, and neither", () => {
    expect(loadSettings(["--tls-cert", cert, "--tls-key", key], {})).toMatchObject({ tlsCert: cert, tlsKey: key });
    expect(loadSettings([], {})).toMatchObject({ tlsCert: undefined, tlsKey: undefined });
    expect(() => loadSettings([], {}, { tlsCert: cert })).toThrow("--tls-key / TASKSTREAM_TLS_KEY is not set");
  });
});
