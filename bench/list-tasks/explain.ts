import {
  CompiledQuery,
  createQueryId,
  type KyselyPlugin,
  type PluginTransformQueryArgs,
  type PluginTransformResultArgs,
  type QueryResult,
  type RootOperationNode,
  type UnknownRow,
} from "kysely";
import type { Db } from "../../src/storage/connect.js";

/** Records the queries a storage call makes, without changing them. */
class Capture implements KyselyPlugin {
  readonly nodes: RootOperationNode[] = [];
  transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
    this.nodes.push(args.node);
    return args.node;
  }
  async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return args.result;
  }
}

/**
 * Runs `call` against a capturing copy of the database handle, then explains
 * each query it made: EXPLAIN QUERY PLAN on SQLite, EXPLAIN (ANALYZE, BUFFERS)
 * on PostgreSQL. Returns one text block per query: the SQL, then its plan.
 */
export async function explainCalls(db: Db, call: (k: Db["kysely"]) => Promise<unknown>): Promise<string[]> {
  const capture = new Capture();
  await call(db.kysely.withPlugin(capture));
  const blocks: string[] = [];
  for (const node of capture.nodes) {
    const query = db.kysely.getExecutor().compileQuery(node, createQueryId());
    const params = query.parameters.map((p) => JSON.stringify(p)).join(", ");
    const header = `${query.sql}\n  -- parameters: [${params}]`;
    if (db.dialect === "sqlite") {
      const { rows } = await db.kysely.executeQuery<{ id: number; parent: number; detail: string }>(
        CompiledQuery.raw(`EXPLAIN QUERY PLAN ${query.sql}`, [...query.parameters]),
      );
      const depth = new Map<number, number>([[0, 0]]);
      const lines = rows.map((r) => {
        const d = (depth.get(r.parent) ?? 0) + 1;
        depth.set(r.id, d);
        return `${"  ".repeat(d)}${r.detail}`;
      });
      blocks.push(`${header}\n${lines.join("\n")}`);
    } else {
      const { rows } = await db.kysely.executeQuery<{ "QUERY PLAN": string }>(
        CompiledQuery.raw(`EXPLAIN (ANALYZE, BUFFERS) ${query.sql}`, [...query.parameters]),
      );
      blocks.push(`${header}\n${rows.map((r) => `  ${r["QUERY PLAN"]}`).join("\n")}`);
    }
  }
  return blocks;
}
