/**
 * The dashboard's and the inspector's work is bounded by what they show, not by numbers a store client
 * wrote: any client can write any bytes under the rendezvous keys. Cost is counted in keys read (never
 * timed: the machine is noisy).
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { encodeOutcome } from "../rendezvous/round.js";
import { KvEngine } from "../store/kv-engine.js";
import { createDashboardApp } from "./dashboard-app.js";
import { inspectRun, inspectRunList, MAX_LISTED_RUN_ID, summarizeRuns } from "./inspector.js";
import { engineKeyReader, type KeyReader } from "./key-reader.js";
import { MAX_TRACKED_SLOTS, RendezvousMonitor } from "./monitor.js";
import { MAX_ROUNDS_WALKED } from "./rdzv-inspect.js";
import { attachRunIndex } from "./run-index.js";
import { type RunSummary, type RunView, summarize } from "./run-view.js";
import {
  decodeTorchState,
  MAX_TORCH_STATE_BYTES,
  readTorchState,
  TORCH_NULL_SENTINEL,
} from "./torch-state.js";

/** An engine whose keys are user keys behind "/", as a TCP store server's, and a reader counting keys read. */
function store(): {
  engine: KvEngine;
  reader: KeyReader & { keysRead: number };
  set(k: string, v: string): void;
} {
  const engine = new KvEngine();
  const inner = engineKeyReader(engine);
  const reader = {
    keysRead: 0,
    read(keys: readonly string[]) {
      reader.keysRead += keys.length;
      return inner.read(keys);
    },
    list: () => inner.list(),
  };
  return { engine, reader, set: (k, v) => engine.set(`/${k}`, Buffer.from(v)) };
}

const complete = (round: number, span: number, excluded: number[] = []): string =>
  encodeOutcome({ kind: "complete", round, span, excluded });

const get = async (app: { fetch(r: Request): Promise<Response> }, path: string) =>
  (await (await app.fetch(new Request(`http://dashboard${path}`))).json()) as {
    runs: (RunSummary | RunView)[];
  };

describe("run summaries", () => {
  it("read a few keys per run however many tickets a counter claims", async () => {
    const { engine, reader, set } = store();
    set("rdzv/big/open", "0");
    set("rdzv/big/r0/tickets", "1000000000");
    const { runs: summaries } = await summarizeRuns(reader);
    // Before: one leave marker read per ticket, up to 1,000,000 (1.2-2 s a request).
    assert.ok(reader.keysRead < 50, `${reader.keysRead} keys read`);
    assert.deepEqual(summaries, [
      { runId: "big", source: "rdzv", state: "joining", round: 0, participants: 1e9, waiting: 0 },
    ]);
    const app = createDashboardApp({ engine, processMetrics: false });
    let reads = 0;
    const engineGet = engine.get.bind(engine);
    engine.get = (key) => {
      reads++;
      return engineGet(key);
    };
    try {
      assert.deepEqual((await get(app, "/api/runs")).runs, summaries);
      assert.ok(reads < 50, `/api/runs read ${reads} keys`);
      reads = 0;
      const [view] = (await get(app, "/api/runs/big")).runs as RunView[];
      assert.ok(reads <= 3 * 5000 + 50, `/api/runs/big read ${reads} keys`);
      assert.equal(view?.participants.length, 5000);
      assert.equal(view?.capped, true);
      assert.ok(
        view?.notes.some((n) => /showing 5000 of 1000000000 tickets \(capped\)/.test(n)),
        view?.notes.join(),
      );
    } finally {
      app.close();
    }
  });

  it("agree with the views' counts of runs in every phase", async () => {
    const { reader, set } = store();
    // joining: 3 tickets, slot 1 left
    set("rdzv/joining/open", "0");
    set("rdzv/joining/r0/tickets", "3");
    set("rdzv/joining/r0/gone/1", "left");
    // idle: every ticket gave up
    set("rdzv/idle/open", "0");
    set("rdzv/idle/r0/tickets", "2");
    set("rdzv/idle/r0/gone/0", "left");
    set("rdzv/idle/r0/gone/1", "dead");
    // complete: round 0 of slots 0..3 without 2; one node waits in round 1, another gave up there
    set("rdzv/complete/open", "1");
    set("rdzv/complete/r0/outcome", complete(0, 4, [2]));
    set("rdzv/complete/r0/tickets", "4");
    set("rdzv/complete/r0/gone/2", "left");
    set("rdzv/complete/r1/tickets", "2");
    set("rdzv/complete/r1/gone/0", "left");
    // re-forming: round 0 ended (a member died), round 1 has a live ticket
    set("rdzv/reforming/open", "1");
    set("rdzv/reforming/r0/outcome", complete(0, 2));
    set("rdzv/reforming/r0/tickets", "2");
    set("rdzv/reforming/r0/gone/1", "dead");
    set("rdzv/reforming/r0/ended", "1");
    set("rdzv/reforming/r1/tickets", "1");
    set("rdzv/reforming/r1/gone/7", "left"); // a marker beyond the tickets counts for nothing
    // ended and nobody back yet: still shows the ended round's members
    set("rdzv/ended/open", "1");
    set("rdzv/ended/r0/outcome", complete(0, 3));
    set("rdzv/ended/r0/ended", "1");
    // closed
    set("rdzv/closed/open", "2");
    set("rdzv/closed/r0/outcome", complete(0, 1));
    set("rdzv/closed/r1/outcome", encodeOutcome({ kind: "closed", round: 1 }));
    set("rdzv/closed2/open", "0");
    set("rdzv/closed2/closed", "1");
    const { runs: summaries } = await summarizeRuns(reader);
    const views: RunSummary[] = [];
    for (const s of summaries) views.push(...(await inspectRun(reader, s.runId)).map(summarize));
    assert.deepEqual(summaries, views);
    assert.deepEqual(
      summaries.map((s) => [s.runId, s.state, s.round, s.participants, s.waiting]),
      [
        ["closed", "closed", 1, 0, 0],
        ["closed2", "closed", 0, 0, 0],
        ["complete", "complete", 0, 3, 1],
        ["ended", "complete", 0, 3, 0],
        ["idle", "idle", 0, 2, 0],
        ["joining", "joining", 0, 3, 0],
        ["reforming", "joining", 1, 1, 0],
      ],
    );
  });
});

describe("run views", () => {
  it("stop walking decided rounds after MAX_ROUNDS_WALKED past a stale open-round hint, and say so", async () => {
    const { reader, set } = store();
    set("rdzv/walk/open", "0");
    for (let r = 0; r < 3000; r++) set(`rdzv/walk/r${r}/outcome`, complete(r, 0));
    const [view] = await inspectRun(reader, "walk");
    // Before: every outcome was read and decoded, 3000 here (200,000 outcomes: 200,013 keys, 280 ms).
    assert.ok(reader.keysRead <= MAX_ROUNDS_WALKED + 10, `${reader.keysRead} keys read`);
    assert.equal(view?.state, "unknown");
    assert.equal(view?.capped, true);
    assert.match(view?.notes.join() ?? "", /stopped reading after 1024 rounds \(capped/);
    reader.keysRead = 0;
    assert.equal((await summarizeRuns(reader)).runs[0]?.state, "unknown");
    assert.ok(reader.keysRead <= MAX_ROUNDS_WALKED + 10, `${reader.keysRead} keys read`);
  });

  it("leave out descriptors, markers and counters too large to be rdzv's, in views and the timeline", async () => {
    const { engine, set } = store();
    const app = createDashboardApp({ engine, processMetrics: false });
    try {
      const huge = "x".repeat(1024 * 1024);
      set("rdzv/d/open", "0");
      set("rdzv/d/r0/tickets", "2");
      set("rdzv/d/r0/node/0", JSON.stringify({ id: huge, addr: "h", pid: 1 }));
      set("rdzv/d/r0/node/1", JSON.stringify({ id: "n1", addr: "h", pid: 2 }));
      set("rdzv/d/r0/hb/1", "1".repeat(1024 * 1024));
      set("rdzv/d/r0/gone/0", `dead${huge}`);
      const res = await app.fetch(new Request("http://dashboard/api/runs/d"));
      const body = await res.text();
      // Before: the timeline held the 1 MiB id (4 descriptors of 60 MiB: a 507 MB answer, 12 s).
      assert.ok(body.length < 10_000, `${body.length} bytes`);
      const { runs, timeline } = JSON.parse(body) as {
        runs: RunView[];
        timeline: { type: string; node?: { id: string }; reason?: string }[];
      };
      assert.deepEqual(
        runs[0]?.participants.map((p) => [p.id, p.status, p.keepAlives]),
        [
          ["slot 0", "dead", undefined],
          ["n1", "alive", undefined],
        ],
      );
      assert.deepEqual(
        timeline.map((e) => [e.type, e.node?.id, e.reason]),
        [
          ["joined", "slot 0", undefined],
          ["joined", "n1", undefined],
          ["left", "slot 0", "other"],
        ],
      );
    } finally {
      app.close();
    }
  });
});

describe("run lists", () => {
  it("hold maxRunsListed runs, the most recently changed first, and say how many there are", async () => {
    const { engine, set } = store();
    for (let i = 0; i < 30; i++) set(`rdzv/run${String(i).padStart(2, "0")}/open`, "0");
    const app = createDashboardApp({ engine, processMetrics: false, maxRunsListed: 10, pushIntervalMs: 20 });
    try {
      set("rdzv/run29/r0/tickets", "1"); // changed since the dashboard started: listed, though its id sorts last
      const list = (await get(app, "/api/runs")) as unknown as {
        runs: RunSummary[];
        total: number;
        truncated: boolean;
      };
      // Before: every run; 100,000 runs made a 9.4 MB answer in 1.4 s (then 94 KB in 250 ms, the key listing).
      assert.deepEqual(
        list.runs.map((r) => r.runId),
        ["run00", "run01", "run02", "run03", "run04", "run05", "run06", "run07", "run08", "run29"],
      );
      assert.equal(list.total, 30);
      assert.equal(list.truncated, true);
      const res = await app.fetch(new Request("http://dashboard/events"));
      const reader = res.body!.getReader();
      let text = "";
      const runsEvent = /^event: runs\ndata: (.*)$/m;
      while (!runsEvent.test(text)) text += new TextDecoder().decode((await reader.read()).value);
      const pushed = JSON.parse(runsEvent.exec(text)![1]!) as {
        runs: unknown[];
        total: number;
        truncated: boolean;
      };
      assert.deepEqual([pushed.runs.length, pushed.total, pushed.truncated], [10, 30, true]);
      await reader.cancel();
      assert.throws(() => createDashboardApp({ engine, maxRunsListed: 0 }), {
        code: "RDZV_INVALID_ARGUMENT",
      });
    } finally {
      app.close();
    }
  });

  it("count runs whose ids pass MAX_LISTED_RUN_ID without listing them", async () => {
    const { reader, set } = store();
    const long = "j".repeat(MAX_LISTED_RUN_ID + 1);
    set("rdzv/short/open", "0");
    set(`rdzv/${long}/open`, "0");
    set(`torch.rendezvous.${long}`, TORCH_NULL_SENTINEL);
    // Before: listed whole; 1000 runs of 60 KB ids made /api/runs a 60 MB answer in 1.7 s (now 234 ms).
    const list = await summarizeRuns(reader);
    assert.deepEqual([list.runs.map((r) => r.runId), list.total, list.truncated], [["short"], 3, true]);
    const views = await inspectRunList(reader);
    assert.deepEqual([views.views.map((r) => r.runId), views.total, views.truncated], [["short"], 3, true]);
    assert.equal((await inspectRun(reader, long)).length, 2);
  });

  it("inspectRunList reads maxRuns runs and about maxKeysTotal keys, however many tickets the counters claim", async () => {
    const { reader, set } = store();
    for (const id of ["a", "b", "c", "d"]) {
      set(`rdzv/${id}/open`, "0");
      set(`rdzv/${id}/r0/tickets`, "1000000000");
    }
    const list = await inspectRunList(reader, { maxRuns: 3, maxKeysTotal: 30_000 });
    // Before (inspectAllRuns, as rdzv status read): 20,000 slots x 3 keys for each run.
    assert.ok(reader.keysRead < 30_000 + 100, `${reader.keysRead} keys read`);
    assert.deepEqual(
      list.views.map((v) => [v.runId, v.capped]),
      [
        ["a", true],
        ["b", true],
        ["c", true],
      ],
    );
    assert.equal(list.views[0]?.participants.length, 5000);
    assert.ok(list.views.reduce((n, v) => n + v.participants.length, 0) <= 10_000);
    assert.equal(list.total, 4);
    assert.equal(list.truncated, true);
  });
});

describe("the run index", () => {
  it("holds an entry per run-list key the store holds, however many forged runs, and lets go of deleted ones", async () => {
    const { engine, set } = store();
    const app = createDashboardApp({ engine, processMetrics: false, maxRunsListed: 5 });
    const { index, detach } = attachRunIndex(engine);
    try {
      set("rdzv/real/open", "0");
      const forged: string[] = [];
      for (let i = 0; i < 10_000; i++) forged.push(`rdzv/f${i}/open`, `rdzv/f${i}/r${i}/gone/${i}`);
      for (let i = 0; i < 10_000; i++) forged.push(`torch.rendezvous.t${i}`, `rdzv/f${i}/r0/hb/${i}`);
      for (const k of forged) set(k, "1");
      assert.equal(index.size, 30_001); // the keep-alives hold nothing
      const list = (await get(app, "/api/runs")) as unknown as { runs: RunSummary[]; total: number };
      assert.deepEqual([list.runs.length, list.total], [5, 20_001]);
      for (const k of forged) engine.delete(`/${k}`);
      assert.equal(index.size, 1);
      assert.deepEqual(index.runIds(), { rdzv: ["real"], pytorch: [] });
      assert.equal(index.leaveMarkers("f7"), undefined);
      assert.deepEqual(
        (await get(app, "/api/runs")).runs.map((r) => r.runId),
        ["real"],
      );
    } finally {
      detach();
      app.close();
    }
  });
});

describe("PyTorch's state", () => {
  it("is not decoded past MAX_TORCH_STATE_BYTES, and each value is decoded once", async () => {
    const { engine, reader } = store();
    // Valid base64 (before: decoded on every read; a 61 MB state cost 1.1 s a /api/runs and as much a write).
    const huge = Buffer.alloc(MAX_TORCH_STATE_BYTES + 4, 0x41);
    const reading = decodeTorchState(huge);
    assert.equal(reading.format, "unknown");
    assert.match(reading.format === "unknown" ? reading.reason : "", /more than 16777216 .*: not decoded/);
    engine.set("/torch.rendezvous.big", huge);
    const [view] = await inspectRun(reader, "big");
    assert.equal(view?.state, "unknown");
    assert.match(view?.notes.join() ?? "", /not decoded/);
    const value = Buffer.from(TORCH_NULL_SENTINEL);
    assert.equal(readTorchState(value), readTorchState(value));
    assert.notEqual(readTorchState(value), readTorchState(Buffer.from(TORCH_NULL_SENTINEL)));
  });
});

describe("the rendezvous monitor", () => {
  const enc = (text: string) => Buffer.from(text);

  it("keeps maxEventsTotal events for all runs, the least recently changed losing theirs first", () => {
    const monitor = new RendezvousMonitor({ maxEventsTotal: 50 });
    for (let r = 0; r < 10; r++) {
      for (let s = 0; s < 10; s++)
        monitor.observe(`rdzv/run${r}/r0/node/${s}`, undefined, enc(`{"id":"n${s}"}`));
    }
    const kept = Array.from({ length: 10 }, (_, r) => monitor.timeline(`run${r}`).length);
    // Before: 1000 events for each of 1000 runs; 300 runs of 1000 joins with 4 KB ids held 1.4 GB.
    assert.ok(kept.reduce((a, b) => a + b) <= 50, kept.join());
    assert.equal(kept[9], 10);
    assert.equal(kept[0], 0);
  });

  it("keeps MAX_TRACKED_SLOTS slots' keep-alive timing, however many slots clients write", () => {
    const monitor = new RendezvousMonitor();
    monitor.observe("rdzv/live/r0/hb/0", undefined, enc("1"));
    // Before: a client writing hb/<n> for ever new n grew the monitor (2 million slots: 211 MB, now 31 MB).
    for (let s = 0; s <= MAX_TRACKED_SLOTS; s++) monitor.observe(`rdzv/spam/r0/hb/${s}`, undefined, enc("1"));
    monitor.observe("rdzv/live/r0/hb/1", undefined, enc("1"));
    assert.equal(monitor.keepAlive("live", 0, 0), undefined); // the least recently changed run lost it first
    assert.notEqual(monitor.keepAlive("live", 0, 1), undefined);
    assert.notEqual(monitor.keepAlive("spam", 0, MAX_TRACKED_SLOTS), undefined);
    assert.equal(monitor.keepAlive("spam", 0, 0), undefined);
  });

  it("keeps node names short, the rounds' starts bounded, and shows a held completion when the next round decides", () => {
    const monitor = new RendezvousMonitor();
    monitor.observe(
      "rdzv/j/r0/node/0",
      undefined,
      enc(JSON.stringify({ id: "i".repeat(3000), addr: "a".repeat(300) })),
    );
    const [joined] = monitor.timeline("j");
    assert.equal(joined?.node?.id.length, 256);
    assert.ok(joined?.node?.id.endsWith("..."));
    assert.equal(joined?.node?.addr?.length, 256);
    // Tickets of 1000 rounds (before: one start kept per round until an outcome; 2 million: 171 MB).
    for (let r = 0; r < 1000; r++) monitor.observe(`rdzv/j/r${r}/tickets`, undefined, enc("1"));
    monitor.observe("rdzv/j/r0/outcome", undefined, enc(complete(0, 3)));
    monitor.observe("rdzv/j/r999/outcome", undefined, enc(complete(999, 0)));
    const completed = monitor.timeline("j").filter((e) => e.type === "completed");
    // Round 0 waited for descriptors of slots 1 and 2; round 999's outcome shows it at once.
    assert.deepEqual(
      completed.map((e) => [e.round, e.elapsedMs === undefined]),
      [
        [0, true],
        [999, false],
      ],
    );
  });
});
