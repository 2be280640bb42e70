/**
 * The run index (run-index.ts) against the key listing it replaces for the dashboard: after any sequence of
 * store operations the two give the same runs, leave markers and run lists.
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { encodeOutcome } from "../rendezvous/round.js";
import { openJournal } from "../store/journal.js";
import { KvEngine } from "../store/kv-engine.js";
import { createDashboardApp } from "./dashboard-app.js";
import { inspectRun, summarizeRuns } from "./inspector.js";
import { engineKeyReader, utf8ToByteString } from "./key-reader.js";
import { attachRunIndex } from "./run-index.js";
import { type LeaveMarkers, listedRunKeys, type RunKeys, runListKey } from "./run-keys.js";
import { type RunSummary, summarize } from "./run-view.js";
import { TORCH_NULL_SENTINEL } from "./torch-state.js";

const IDS = ["a", "b", "a/b", "é", "x.y", "a/r0/store", ""];
const RDZV_PATHS = [
  "open",
  "closed",
  "r0/tickets",
  "r0/outcome",
  "r0/hb/0",
  "r0/node/1",
  "r0/gone/0",
  "r0/gone/1",
  "r1/gone/0",
  "r01/gone/0",
  "r0/gone/00",
  "r0/store/open",
  "r0/store/r1/gone/0",
];

/** Engine keys: user keys behind "/" as a TCP store server holds them, and a few that are no user key. */
const engineKey = fc
  .oneof(
    { weight: 6, arbitrary: fc.tuple(fc.constantFrom(...IDS), fc.constantFrom(...RDZV_PATHS)) },
    { weight: 2, arbitrary: fc.tuple(fc.constantFrom(...IDS), fc.constantFrom("", ".0/MASTER_ADDR")) },
    { weight: 1, arbitrary: fc.constantFrom("/worker/1", "/x", "rdzv/a/open", "/rdzv/\xff/open", "init/") },
  )
  .map((k) => {
    if (typeof k === "string") return k;
    const [id, path] = k;
    const user = path === "" || path.startsWith(".") ? `torch.rendezvous.${id}${path}` : `rdzv/${id}/${path}`;
    return `/${utf8ToByteString(user)}`;
  });

const value = fc.constantFrom(
  "0",
  "1",
  "3",
  "left",
  "dead",
  TORCH_NULL_SENTINEL,
  encodeOutcome({ kind: "complete", round: 0, span: 2, excluded: [] }),
);

type Op =
  | { op: "set" | "append" | "add" | "delete" | "push"; key: string; value: string }
  | { op: "compareSet"; key: string; value: string; expect: "missing" | "current" | "other" }
  | { op: "multiSet"; keys: string[]; value: string }
  | { op: "deleteRun"; id: string };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constantFrom("set", "append", "add", "delete", "push"), key: engineKey, value }),
  fc.record({
    op: fc.constant("compareSet"),
    key: engineKey,
    value,
    expect: fc.constantFrom("missing", "current", "other"),
  }),
  fc.record({ op: fc.constant("multiSet"), keys: fc.array(engineKey, { maxLength: 4 }), value }),
  fc.record({ op: fc.constant("deleteRun"), id: fc.constantFrom(...IDS) }),
) as fc.Arbitrary<Op>;

function apply(engine: KvEngine, o: Op): void {
  if (o.op === "deleteRun") {
    // Every key of the run (its round stores' included): it disappears.
    const prefix = `/${utf8ToByteString(`rdzv/${o.id}/`)}`;
    for (const k of [...engine.keys()]) if (k.startsWith(prefix)) engine.delete(k);
    engine.delete(`/${utf8ToByteString(`torch.rendezvous.${o.id}`)}`);
    return;
  }
  const bytes = Buffer.from(o.value);
  if (o.op === "set") engine.set(o.key, bytes);
  else if (o.op === "append") engine.append(o.key, bytes);
  else if (o.op === "delete") engine.delete(o.key);
  else if (o.op === "push") engine.queuePush(o.key, bytes);
  else if (o.op === "multiSet")
    engine.multiSet(
      o.keys,
      o.keys.map(() => bytes),
    );
  else if (o.op === "compareSet") {
    const current = engine.get(o.key) ?? new Uint8Array();
    const expected =
      o.expect === "missing" ? new Uint8Array() : o.expect === "current" ? current : Buffer.from("?");
    engine.compareSet(o.key, expected, bytes);
  } else {
    try {
      engine.add(o.key, 1n);
    } catch {
      // not a counter: nothing changes
    }
  }
}

/** Markers with each round's slots sorted, rounds in order (a listing keeps the keys' order). */
const sorted = (m: LeaveMarkers | undefined) =>
  m === undefined
    ? undefined
    : [...m].map(([r, s]) => [r, [...s].sort((x, y) => x - y)] as const).sort((x, y) => x[0] - y[0]);

function assertSame(indexed: RunKeys, listed: RunKeys): void {
  const ids = listed.runIds();
  assert.deepEqual(indexed.runIds(), ids);
  for (const id of IDS)
    assert.deepEqual(sorted(indexed.leaveMarkers(id)), sorted(listed.leaveMarkers(id)), id);
}

describe("the run index", () => {
  it("gives the runs, leave markers and run lists of a key listing after any store operations", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(op, { maxLength: 30 }),
        fc.array(op, { maxLength: 60 }),
        fc.integer({ min: 1, max: 4 }),
        async (before, ops, maxRuns) => {
          const engine = new KvEngine();
          for (const o of before) apply(engine, o); // as restored from a data directory
          const { index, detach } = attachRunIndex(engine);
          const plain = engineKeyReader(engine);
          const indexed = engineKeyReader(engine, "/", { runKeys: index });
          const listedNow = async () => listedRunKeys((await plain.list()) ?? []);
          assertSame(index, await listedNow());
          for (const o of ops) {
            apply(engine, o);
            const listed = await listedNow();
            assertSame(index, listed);
            // One entry per key with a role in the run list, no more (memory).
            const roles = ((await plain.list()) ?? []).filter((k) => runListKey(k) !== undefined);
            assert.equal(index.size, roles.length);
          }
          const prefer = ["b", "é", "a"];
          assert.deepEqual(
            await summarizeRuns(indexed, { maxRuns, prefer }),
            await summarizeRuns(plain, { maxRuns, prefer }),
          );
          detach();
        },
      ),
      { numRuns: 300 },
    );
  });

  it("counts a leave marker only as views read it, not under a round or slot written with leading zeros", async () => {
    const engine = new KvEngine();
    const set = (k: string, v: string) => engine.set(`/${k}`, Buffer.from(v));
    set("rdzv/z/open", "0");
    set("rdzv/z/r0/tickets", "3");
    set("rdzv/z/r0/gone/1", "left");
    set("rdzv/z/r0/gone/01", "left");
    set("rdzv/z/r00/gone/2", "left");
    assert.equal(runListKey("rdzv/z/r0/gone/01"), undefined);
    const { index, detach } = attachRunIndex(engine);
    const plain = engineKeyReader(engine);
    const indexed = engineKeyReader(engine, "/", { runKeys: index });
    const views = (await inspectRun(plain, "z")).map(summarize);
    // Before: the listing counted gone/1, gone/01 and r00/gone/2, two live tickets fewer than the view.
    for (const reader of [plain, indexed]) assert.deepEqual((await summarizeRuns(reader)).runs, views);
    detach();
  });
});

describe("the dashboard's run list", () => {
  const dirs: string[] = [];
  after(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  it("comes from the run index built from a restored data directory, without listing the store's keys", async () => {
    const dir = mkdtempSync(join(tmpdir(), "rdzv-run-index-"));
    dirs.push(dir);
    const first = new KvEngine();
    const journal = openJournal(first, { dir, fsync: "never" });
    const set = (engine: KvEngine, k: string, v: string) => engine.set(`/${k}`, Buffer.from(v));
    set(first, "rdzv/kept/open", "0");
    set(first, "rdzv/kept/r0/tickets", "2");
    set(first, "rdzv/kept/r0/gone/0", "left");
    set(first, "rdzv/gone/open", "0");
    set(first, "torch.rendezvous.t", TORCH_NULL_SENTINEL);
    for (let i = 0; i < 1000; i++) set(first, `worker/${i}`, "x");
    first.delete("/rdzv/gone/open");
    journal.close();

    const engine = new KvEngine();
    const restored = openJournal(engine, { dir, fsync: "never" });
    const app = createDashboardApp({ engine, processMetrics: false });
    const keys = engine.keys.bind(engine);
    let listed = 0;
    engine.keys = () => {
      listed++;
      return keys();
    };
    const runs = async () =>
      (
        (await (await app.fetch(new Request("http://dashboard/api/runs"))).json()) as { runs: RunSummary[] }
      ).runs.map((r) => [r.runId, r.source, r.state, r.participants]);
    try {
      assert.deepEqual(await runs(), [
        ["kept", "rdzv", "joining", 2],
        ["t", "pytorch", "idle", 0],
      ]);
      set(engine, "rdzv/new/open", "0");
      engine.delete("/torch.rendezvous.t");
      engine.delete("/rdzv/kept/r0/gone/0");
      engine.delete("/rdzv/kept/r0/tickets");
      assert.deepEqual(await runs(), [
        ["kept", "rdzv", "idle", 0],
        ["new", "rdzv", "idle", 0],
      ]);
      engine.delete("/rdzv/kept/open");
      assert.deepEqual(await runs(), [["new", "rdzv", "idle", 0]]);
      // Before: every /api/runs listed every key of the store.
      assert.equal(listed, 0);
    } finally {
      app.close();
      restored.close();
    }
  });
});
