import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import type { TestProject } from "vitest/node";

declare module "vitest" {
  export interface ProvidedContext {
    postgresUrl: string;
  }
}

/**
 * One real PostgreSQL for the whole test run, in a child process of its own
 * (see postgres-process.ts for why); each test server makes a database in it.
 */
export default async function setup(project: TestProject) {
  const child = spawn(process.execPath, ["--import", "tsx", "test/support/postgres-process.ts"], { stdio: ["pipe", "pipe", "inherit"] });
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const url = await new Promise<string>((resolve, reject) => {
    child.once("exit", (code) => reject(new Error(`embedded PostgreSQL exited with ${code} before it was ready`)));
    createInterface({ input: child.stdout! }).once("line", (line) => resolve((JSON.parse(line) as { url: string }).url));
  });
  project.provide("postgresUrl", url);
  return async () => {
    child.stdin!.end();
    await exited;
  };
}
