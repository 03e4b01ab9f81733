import BetterSqlite3 from "better-sqlite3";
import { existsSync, mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { Kysely, PostgresDialect, SqliteDialect, type KyselyConfig, type SqliteDatabase, type SqliteStatement } from "kysely";
import pg from "pg";
import type { Database } from "./schema.js";
import { SqliteCheckpointer } from "./sqlite-checkpointer.js";

export type DialectName = "sqlite" | "postgres";

/** An open database with the dialect it speaks. */
export interface Db {
  kysely: Kysely<Database>;
  dialect: DialectName;
  close(): Promise<void>;
}

/** How a PostgreSQL pool connects. */
export interface PoolOptions {
  /** Connections at most; default 10. */
  poolSize?: number;
  /** The longest a query waits for a connection, a new one's connect included; default 5000 ms. */
  connectTimeoutMs?: number;
}

/** The default of --database-connect-timeout-ms. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;

/**
 * How every PostgreSQL connection taskstream opens connects and stays alive:
 * the pool's and the LISTEN connection's alike.
 */
export function pgConnectionOptions(connectTimeoutMs = DEFAULT_CONNECT_TIMEOUT_MS) {
  return {
    // Without it a connect to a database that accepts TCP but never answers
    // (packets dropped) waits forever; with it the attempt fails. In a pool
    // it also bounds the wait for a busy pool to free a connection.
    connectionTimeoutMillis: connectTimeoutMs,
    // Probes connections that wait long (on a lock, or LISTENing), so a dead
    // peer is found and firewalls and NATs keep the flow. 0 would keep the
    // OS's first probe after 2 hours, later than most idle timeouts on the way.
    keepAlive: true,
    keepAliveInitialDelayMillis: 30_000,
  } satisfies pg.ClientConfig;
}

/** Opens a `postgres://` URL, or otherwise a SQLite file path (created with its folder). */
export function openDatabase(location: string, options: PoolOptions & { log?: KyselyConfig["log"] } = {}): Db {
  const { log } = options;
  const kysely = isPostgresUrl(location)
    ? new Kysely<Database>({ dialect: new PostgresDialect({ pool: postgresPool(location, options) }), log })
    : new Kysely<Database>({ dialect: new SqliteDialect({ database: withStatementCache(sqliteDatabase(location)) }), log });
  const checkpointer = isPostgresUrl(location) || location === ":memory:" ? undefined : new SqliteCheckpointer(location);
  return {
    kysely,
    dialect: isPostgresUrl(location) ? "postgres" : "sqlite",
    close: async () => {
      await checkpointer?.close();
      await kysely.destroy();
    },
  };
}

export function isPostgresUrl(location: string): boolean {
  return /^postgres(ql)?:\/\//.test(location);
}

/** Redacts the password of a database URL, for logs. */
export function describeLocation(location: string): string {
  return isPostgresUrl(location) ? location.replace(/\/\/([^:/@]+):[^@]*@/, "//$1:***@") : location;
}

function postgresPool(url: string, { poolSize = 10, connectTimeoutMs }: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: poolSize,
    // A call that gets no connection in time fails, and storage-errors
    // answers UNAVAILABLE, rather than waiting forever.
    ...pgConnectionOptions(connectTimeoutMs),
    // BIGINT columns hold epoch milliseconds and sequences: well inside 2^53.
    types: {
      getTypeParser: ((oid: number, format?: "text" | "binary") =>
        oid === pg.types.builtins.INT8 ? Number : pg.types.getTypeParser(oid, format as "text")) as typeof pg.types.getTypeParser,
    },
  });
  // A connection dropped by the server (a restart, a failover) emits an error;
  // unheard, it would end the process. The pool discards idle ones, and the
  // query or transaction using a busy one fails with the error itself.
  pool.on("error", () => {});
  pool.on("connect", (client) => client.on("error", () => {}));
  return pool;
}

/**
 * `mkdir -p`, one level at a time. Node's `mkdirSync(dir, { recursive: true })`
 * never returns, spinning a core, when a parent exists but mkdir still
 * answers ENOENT (under /proc, or on a stale mount): the server would hang
 * at start instead of saying what is wrong.
 */
function makeDirectories(dir: string): void {
  if (existsSync(dir)) return;
  const parent = dirname(dir);
  if (parent !== dir) makeDirectories(parent);
  try {
    mkdirSync(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
  }
}

function sqliteDatabase(path: string): BetterSqlite3.Database {
  if (path !== ":memory:") makeDirectories(dirname(path));
  const db = new BetterSqlite3(path);
  db.pragma("journal_mode = WAL");
  // WAL with NORMAL sync loses no committed transaction on a process crash,
  // only on power loss, and spares an fsync per commit.
  db.pragma("synchronous = NORMAL");
  db.pragma("busy_timeout = 5000");
  // A SqliteCheckpointer keeps the WAL short from another thread; this
  // connection checkpoints (and waits on the disk) only if that falls far behind.
  db.pragma("wal_autocheckpoint = 10000");
  db.pragma(`journal_size_limit = ${64 * 1024 * 1024}`);
  // Statement journals (each statement that may need undoing alone, such as
  // one firing the task_counts triggers) in memory, not in temporary files:
  // a task-row insert or status update took twice as long with them on disk.
  db.pragma("temp_store = MEMORY");
  return db;
}

/**
 * Kysely prepares every query it runs, and preparing costs SQLite more than
 * running most of ours. The same SQL text reuses its prepared statement;
 * the least recently used are dropped past `capacity` (lists with `in (...)`
 * make a text per length). Kysely runs one query at a time on this
 * connection, so a cached statement is never in use twice.
 */
export function withStatementCache(db: BetterSqlite3.Database, capacity = 500): SqliteDatabase {
  const cache = new Map<string, CachedStatement>();
  return {
    close: () => db.close(),
    prepare(text: string) {
      const cached = cache.get(text);
      if (cached && !cached.busy) {
        // Re-inserting moves it to the end: the Map's order is recency.
        cache.delete(text);
        cache.set(text, cached);
        return cached;
      }
      const prepared = db.prepare(text);
      const statement = prepared.reader ? rowsAsObjects(prepared) : prepared;
      cache.set(text, statement);
      if (cache.size > capacity) cache.delete(cache.keys().next().value!);
      return statement;
    },
  };
}

type CachedStatement = SqliteStatement & { readonly busy: boolean };

/**
 * A reading statement whose rows come from SQLite as arrays and are built
 * into objects of one fixed shape. better-sqlite3's own row objects get a
 * property at a time and end up in V8's dictionary mode, slow to build and to
 * read: a page of 51 tasks (32 columns) took 0.69 ms that way, 0.29 ms as
 * arrays (better-sqlite3 alone); listTasks' first page 0.83 → 0.44 ms.
 */
function rowsAsObjects(statement: BetterSqlite3.Statement): CachedStatement {
  const names = statement.columns().map((column) => column.name);
  // A "__proto__" key in an object literal would set the prototype instead.
  if (names.includes("__proto__")) return statement;
  statement.raw(true);
  // Later columns of the same name win, as better-sqlite3's rows have it.
  const build = new Function("row", `return { ${names.map((name, i) => `${JSON.stringify(name)}: row[${i}]`).join(", ")} };`) as (row: unknown[]) => unknown;
  return {
    reader: true,
    get busy() {
      return statement.busy;
    },
    all: (parameters) => (statement.all(parameters) as unknown[][]).map(build),
    run: (parameters) => statement.run(parameters),
    *iterate(parameters) {
      for (const row of statement.iterate(parameters)) yield build(row as unknown[]);
    },
  };
}
