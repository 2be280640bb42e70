/**
 * Run retention (run-retention.ts) on a real TCP store server with a data directory: real rendezvous and
 * launcher keys, PyTorch's layout, user keys; the idle clock is the test's, sweeps are called by hand.
 */

import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { LauncherStore } from "../agent/launcher-store.js";
import { silentLogger } from "../log.js";
import { registerBuiltinRendezvousHandlers } from "../rendezvous/builtins.js";
import { createRendezvousHandler } from "../rendezvous/registry.js";
import { type Journal, openJournal } from "../store/journal.js";
import { KvEngine } from "../store/kv-engine.js";
import { connectTCPStore, type TCPStore } from "../store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../store/tcp/server.js";
import { createDashboardApp, type DashboardApp } from "./dashboard-app.js";
import { type RunRetention, startRunRetention } from "./run-retention.js";

registerBuiltinRendezvousHandlers();

const TTL_MS = 60_000;
const HOUR_MS = 3_600_000;

interface Logged {
  level: string;
  message: string;
  fields: Record<string, unknown> | undefined;
}

describe("run retention on a TCP store server", () => {
  let dir: string;
  let journal: Journal;
  let server: TCPStoreServer;
  let client: TCPStore;
  let retention: RunRetention;
  let app: DashboardApp;
  let clock = 0;
  const logged: Logged[] = [];
  const log =
    (level: string) =>
    (message: string, fields?: Record<string, unknown>): void => {
      logged.push({ level, message, fields });
    };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "rdzv-retention-"));
    const engine = new KvEngine();
    journal = openJournal(engine, { dir });
    server = await createTCPStoreServer({ port: 0, engine });
    retention = startRunRetention(server.engine, {
      ttlMs: TTL_MS,
      sweepIntervalMs: HOUR_MS, // sweeps by hand only
      now: () => clock,
      logger: { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") },
    });
    app = createDashboardApp({
      engine: server.engine,
      retention: () => retention.stats(),
      processMetrics: false,
    });
    client = await connectTCPStore({ host: "127.0.0.1", port: server.port });
  });
  after(async () => {
    app?.close();
    retention?.close();
    await client?.close();
    await server?.close();
    journal?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const keys = async (): Promise<string[]> => (await client.listKeys()).sort();
  const runIds = async (): Promise<string[]> => {
    const list = (await (await app.fetch(new Request("http://x/api/runs"))).json()) as {
      runs: { runId: string; source: string }[];
    };
    return list.runs.map((r) => `${r.source}:${r.runId}`).sort();
  };

  /** The runs of the first test that keep writing. */
  const beatLiveRuns = async (): Promise<void> => {
    await client.add("rdzv/live/r0/hb/0", 1);
    await client.set("rdzv/done/sub/r0/store/x", "1");
    await client.set("torch.rendezvous.ttrain", "bmV3ZXI=");
  };

  it("deletes an idle run, every key of it in both layouts, and keeps live runs and every other key", async () => {
    // A real rendezvous of two nodes on run "done", a launcher failure claim, then the nodes go away.
    const nodes = await Promise.all(
      [0, 1].map(() =>
        createRendezvousHandler({
          backend: "c10d",
          endpoint: `127.0.0.1:${server.port}`,
          runId: "done",
          minNodes: 2,
          maxNodes: 2,
          localAddr: "127.0.0.1",
          config: { is_host: false, last_call_timeout: 0.1, keep_alive_interval: 0.2, join_timeout: 60 },
        }),
      ),
    );
    const infos = await Promise.all(nodes.map((n) => n.nextRendezvous()));
    const launcher = LauncherStore.of(infos[0]!, "done");
    assert.equal((await launcher.claimFailure("r0.c0", "node-a")).won, true);
    for (const n of nodes) await n.shutdown();
    // PyTorch's layout: torchrun's state key and its round's store.
    await client.set("torch.rendezvous.tjob", "c3RhdGU=");
    await client.set("torch.rendezvous.tjob.0/MASTER_ADDR", "127.0.0.1");
    await client.set("torch.rendezvous.tjob.0/torchelastic/agent/terminal_state0", "1");
    // Runs that keep writing, one of them with an id under "done/", and keys that are no run's.
    await client.add("rdzv/live/open", 0);
    await client.add("rdzv/live/r0/hb/0", 1);
    await client.add("rdzv/done/sub/open", 0);
    await client.set("torch.rendezvous.ttrain", "c3RhdGU=");
    const others = [
      "worker/attempt_0/rank0",
      "rdzv/done/notes",
      "rdzv/done/r01/outcome",
      "rdzvdone/open",
      "torch.rendezvous.orphan.0/MASTER_ADDR",
      "torch.rendezvous.tjob/x",
    ];
    for (const k of others) await client.set(k, "user");
    const listed = await keys();
    const doneKeys = listed.filter(
      (k) => k.startsWith("rdzv/done/") && !k.startsWith("rdzv/done/sub/") && !others.includes(k),
    );
    // The rendezvous wrote its whole layout: round keys, slots, the round store, the launcher's keys.
    for (const k of [
      "rdzv/done/open",
      "rdzv/done/r0/outcome",
      "rdzv/done/r0/hb/1",
      "rdzv/done/r0/store/MASTER_ADDR",
      "rdzv/done/launcher/restarts",
    ]) {
      assert.ok(doneKeys.includes(k), `${k} in ${doneKeys.join(" ")}`);
    }
    assert.deepEqual(await runIds(), [
      "pytorch:tjob",
      "pytorch:ttrain",
      "rdzv:done",
      "rdzv:done/sub",
      "rdzv:live",
    ]);

    // A sweep counts the writes since the last one as made now.
    assert.deepEqual(await retention.sweep(), []);
    clock += TTL_MS / 2;
    await beatLiveRuns();
    assert.deepEqual(await retention.sweep(), []);
    clock += TTL_MS / 2 + 1;
    const held = await keys();
    assert.deepEqual(await retention.sweep(), ["done", "tjob"]);

    const tjobKeys = ["torch.rendezvous.tjob", "torch.rendezvous.tjob.0/MASTER_ADDR"];
    const gone = [...doneKeys, ...tjobKeys, "torch.rendezvous.tjob.0/torchelastic/agent/terminal_state0"];
    assert.deepEqual(
      await keys(),
      held.filter((k) => !gone.includes(k)),
    );
    for (const k of others) assert.equal(await client.check([k]), true, k);
    assert.deepEqual(await runIds(), ["pytorch:ttrain", "rdzv:done/sub", "rdzv:live"]);
    assert.deepEqual(retention.stats(), { runsExpired: 2, keysDeleted: gone.length });
    const metrics = await (await app.fetch(new Request("http://x/metrics"))).text();
    assert.match(metrics, /^rdzv_runs_expired_total 2$/m);
    assert.match(metrics, new RegExp(`^rdzv_run_keys_expired_total ${gone.length}$`, "m"));
    const expired = logged.filter((l) => l.message.includes("run expired"));
    assert.deepEqual(
      expired.map((l) => [l.level, l.fields?.runId, l.fields?.layout, l.fields?.keys, l.fields?.idleS]),
      [
        ["info", "done", "rdzv", doneKeys.length, 60],
        ["info", "tjob", "pytorch", 3, 60],
      ],
    );
  });

  it("stops deleting a run written while its keys go in slices: the rest stays, listed", async () => {
    const slowLogged: string[] = [];
    const slow = startRunRetention(server.engine, {
      ttlMs: TTL_MS,
      sweepIntervalMs: HOUR_MS,
      now: () => clock,
      maxKeysPerSlice: 3,
      maxSliceMs: HOUR_MS, // slices by key count only
      logger: { ...silentLogger, warn: (m) => slowLogged.push(m) },
    });
    try {
      await client.add("rdzv/big/open", 0);
      for (let s = 0; s < 10; s++) await client.add(`rdzv/big/r0/hb/${s}`, 1);
      const bigKeys = (): string[] => [...server.engine.keys()].filter((k) => k.startsWith("/rdzv/big/"));
      assert.deepEqual(await slow.sweep(), []);
      clock += TTL_MS + 1;
      await beatLiveRuns();
      const sweep = slow.sweep();
      // The first slice went at once; a keep-alive lands before the next one.
      assert.equal(bigKeys().length, 11 - 3);
      server.engine.add("/rdzv/big/r0/hb/9", 1n);
      assert.deepEqual(await sweep, []);
      assert.equal(bigKeys().length, 8);
      assert.ok(bigKeys().includes("/rdzv/big/open"), "the run-list key goes last");
      assert.deepEqual(slow.stats(), { runsExpired: 0, keysDeleted: 3 });
      assert.equal(slowLogged.filter((l) => l.includes("written while it expired")).length, 1);
      // Idle again for the TTL (from the sweep that sees the keep-alive): it goes, all of it.
      assert.deepEqual(await slow.sweep(), []);
      clock += TTL_MS + 1;
      await beatLiveRuns();
      assert.deepEqual(await slow.sweep(), ["big"]);
      assert.deepEqual(bigKeys(), []);
      assert.deepEqual(slow.stats(), { runsExpired: 1, keysDeleted: 11 });
    } finally {
      slow.close();
    }
  });

  it("deletes keys that come back to an expired run once idle for the TTL, counted as keys only; keys of no ended run stay", async () => {
    // Agents of the runs deleted above stalled through the expiry and resume: their keys come back.
    await client.add("rdzv/done/r0/hb/1", 1);
    await client.set("torch.rendezvous.tjob.0/torchelastic/agent/terminal_state1", "1");
    const back = ["rdzv/done/r0/hb/1", "torch.rendezvous.tjob.0/torchelastic/agent/terminal_state1"];
    const before = retention.stats();
    assert.deepEqual(await retention.sweep(), []);
    clock += TTL_MS / 2;
    await beatLiveRuns();
    assert.deepEqual(await retention.sweep(), []);
    for (const k of back) assert.equal(await client.check([k]), true, `${k}: kept for the TTL`);
    clock += TTL_MS / 2 + 1;
    await beatLiveRuns();
    assert.deepEqual(await retention.sweep(), [], "no run was deleted");
    for (const k of back) assert.equal(await client.check([k]), false, k);
    for (const k of ["torch.rendezvous.orphan.0/MASTER_ADDR", "rdzv/done/notes", "rdzv/done/r01/outcome"]) {
      assert.equal(await client.check([k]), true, `${k}: no run's`);
    }
    assert.deepEqual(await runIds(), ["pytorch:ttrain", "rdzv:done/sub", "rdzv:live"]);
    assert.deepEqual(retention.stats(), {
      runsExpired: before.runsExpired,
      keysDeleted: before.keysDeleted + 2,
    });
    const lines = logged.filter((l) => l.message.includes("keys of an ended run"));
    assert.deepEqual(
      lines.map((l) => [l.fields?.runId, l.fields?.layout, l.fields?.keys, l.fields?.idleS]),
      [
        ["done", "rdzv", 1, 60],
        ["tjob", "pytorch", 1, 60],
      ],
    );
  });

  it("rejects a TTL, sweep interval or slice that is not a positive integer", () => {
    for (const bad of [
      { ttlMs: 0 },
      { ttlMs: 1.5 },
      { ttlMs: 10, sweepIntervalMs: 0 },
      { ttlMs: 10, maxKeysPerSlice: -1 },
      { ttlMs: 10, maxSliceMs: 0 },
    ]) {
      assert.throws(
        () => startRunRetention(server.engine, bad),
        { code: "RDZV_INVALID_ARGUMENT" },
        JSON.stringify(bad),
      );
    }
  });

  it("journals the deletions: the data directory restores the store as it is after the sweeps", async () => {
    await client.close();
    await server.close();
    const held = [...server.engine.keys()].sort();
    assert.ok(!held.some((k) => k.startsWith("/rdzv/done/r0/")));
    journal.close();
    const restored = new KvEngine();
    openJournal(restored, { dir }).close();
    assert.deepEqual([...restored.keys()].sort(), held);
  });
});
