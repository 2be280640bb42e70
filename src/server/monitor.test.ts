import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { findTorch2 } from "../../test/helpers/torch.js";
import { silentLogger } from "../log.js";
import { encodeOutcome, MAX_SPAN } from "../rendezvous/round.js";
import { KvEngine } from "../store/kv-engine.js";
import { inspectRun } from "./inspector.js";
import { engineKeyReader } from "./key-reader.js";
import { RendezvousMonitor } from "./monitor.js";
import type { TimelineEvent } from "./run-view.js";

const enc = (s: string): Uint8Array => Buffer.from(s);
const desc = (slot: number) => enc(JSON.stringify({ id: `h_${100 + slot}_0`, addr: "h", pid: 100 + slot }));

/** A monitor on a virtual clock, and a way to feed it created keys. */
function setup() {
  let clock = 1000;
  const monitor = new RendezvousMonitor({ now: () => clock });
  const seen: TimelineEvent[] = [];
  monitor.on("event", (e) => seen.push(e));
  const create = (key: string, value: Uint8Array, advanceMs = 10): void => {
    clock += advanceMs;
    monitor.observe(key, undefined, value);
  };
  const update = (key: string, value: Uint8Array, advanceMs = 10): void => {
    clock += advanceMs;
    monitor.observe(key, enc("0"), value);
  };
  return { monitor, seen, create, update };
}

describe("RendezvousMonitor", () => {
  it("says a run changed when its run-list key or a leave marker is deleted, and for no other deletion", () => {
    const { monitor, create } = setup();
    const changed: [string, boolean][] = [];
    monitor.on("changed", (runId, keepAliveOnly) => changed.push([runId, keepAliveOnly]));
    create("rdzv/a/b/r0/hb/0", enc("1"));
    changed.length = 0;
    for (const key of [
      "rdzv/a/b/r0/hb/0",
      "rdzv/a/b/r0/gone/1",
      "rdzv/a/b/open",
      "torch.rendezvous.t",
      "user",
    ]) {
      monitor.observe(key, enc("1"), undefined);
    }
    assert.deepEqual(changed, [
      ["a/b", false],
      ["a/b", false],
      ["t", false],
    ]);
  });

  it("turns rdzv keys into joined, completed (with latency), nodeLost, left and one closed", () => {
    const { monitor, seen, create } = setup();
    create("rdzv/j/open", enc("0"));
    create("rdzv/j/r0/tickets", enc("1"));
    for (const slot of [0, 1]) create(`rdzv/j/r0/node/${slot}`, desc(slot));
    create("rdzv/j/r0/outcome", enc(encodeOutcome({ kind: "complete", round: 0, span: 2, excluded: [] })));
    create("rdzv/j/r0/gone/1", enc("dead"));
    create("rdzv/j/r0/gone/0", enc("rejoined"));
    create("rdzv/j/r1/outcome", enc(encodeOutcome({ kind: "closed", round: 1 })));
    create("rdzv/j/closed", enc("1"));
    assert.deepEqual(
      seen.map((e) => [e.type, e.round, e.node?.slot, e.reason, e.worldSize, e.elapsedMs]),
      [
        ["joined", 0, 0, undefined, undefined, undefined],
        ["joined", 0, 1, undefined, undefined, undefined],
        ["completed", 0, undefined, undefined, 2, 30],
        ["nodeLost", 0, 1, "dead", undefined, undefined],
        ["left", 0, 0, "rejoined", undefined, undefined],
        ["closed", 1, undefined, undefined, undefined, undefined],
      ],
    );
    assert.equal(seen[3]?.node?.id, "h_101_0");
    assert.deepEqual(monitor.timeline("j"), seen);
  });

  it("holds a completion back until the descriptor of the member that completed it arrives", () => {
    const { seen, create } = setup();
    create("rdzv/j/r0/tickets", enc("1"));
    create("rdzv/j/r0/node/0", desc(0));
    // The coordinator counted slot 1's ticket; its descriptor is still on the way.
    create("rdzv/j/r0/outcome", enc(encodeOutcome({ kind: "complete", round: 0, span: 2, excluded: [] })));
    assert.deepEqual(
      seen.map((e) => e.type),
      ["joined"],
    );
    create("rdzv/j/r0/node/1", desc(1));
    assert.deepEqual(
      seen.map((e) => e.type),
      ["joined", "joined", "completed"],
    );
    assert.ok(seen[2]!.at >= seen[1]!.at);
  });

  it("does not count a ticket taken in a round already decided as a join", () => {
    const { seen, create } = setup();
    for (const slot of [0, 1]) create(`rdzv/j/r0/node/${slot}`, desc(slot));
    create("rdzv/j/r0/outcome", enc(encodeOutcome({ kind: "complete", round: 0, span: 2, excluded: [] })));
    create("rdzv/j/r0/node/2", desc(2)); // too late for round 0: this node goes on to round 1
    create("rdzv/j/r1/node/0", desc(2));
    assert.deepEqual(
      seen.map((e) => [e.type, e.round, e.node?.slot]),
      [
        ["joined", 0, 0],
        ["joined", 0, 1],
        ["completed", 0, undefined],
        ["joined", 1, 0],
      ],
    );
  });

  it("shows a held completion anyway when a descriptor never comes", async () => {
    const { seen, create } = setup();
    create("rdzv/j/r0/outcome", enc(encodeOutcome({ kind: "complete", round: 0, span: 1, excluded: [] })));
    assert.equal(seen.length, 0);
    const deadline = Date.now() + 30_000;
    while (seen.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(
      seen.map((e) => e.type),
      ["completed"],
    );
  });

  it("times keep-alives by their counter moves and ignores keys of a round's own store", () => {
    const { monitor, seen, create, update } = setup();
    create("rdzv/j/r0/hb/3", enc("1"));
    assert.deepEqual(monitor.keepAlive("j", 0, 3), { at: 1010 });
    update("rdzv/j/r0/hb/3", enc("2"), 500);
    assert.deepEqual(monitor.keepAlive("j", 0, 3), { at: 1510, intervalMs: 500 });
    create("rdzv/j/r0/store/rdzv/x/r0/node/0", desc(0));
    create("rdzv/j/r0/store/x/r0/node/0", desc(0));
    assert.deepEqual(seen, []);
  });

  it("keeps a bounded timeline per run and a bounded number of runs", () => {
    const monitor = new RendezvousMonitor({ maxEventsPerRun: 3, maxRuns: 2 });
    for (let s = 0; s < 5; s++) monitor.observe(`rdzv/a/r0/node/${s}`, undefined, desc(s));
    assert.deepEqual(
      monitor.timeline("a").map((e) => e.node?.slot),
      [2, 3, 4],
    );
    monitor.observe("rdzv/b/r0/node/0", undefined, desc(0));
    monitor.observe("rdzv/c/r0/node/0", undefined, desc(0));
    assert.deepEqual(monitor.timeline("a"), []);
    assert.equal(monitor.timeline("c").length, 1);
  });

  it("follows forged outcomes within the store's write without failing it or looping over their span", async () => {
    const engine = new KvEngine();
    const logged: string[] = [];
    const logger = { ...silentLogger, warn: (message: string) => void logged.push(message) };
    const monitor = new RendezvousMonitor({ logger });
    const seen: TimelineEvent[] = [];
    monitor.on("event", (e) => seen.push(e));
    monitor.attach(engine);
    engine.set("/rdzv/evil/open", enc("0"));
    // A span past MAX_SPAN is corrupt: the write stands, the timeline shows nothing (a span of 9e15 made
    // the server build an array of that many slots and die).
    engine.set("/rdzv/evil/r0/outcome", enc(JSON.stringify({ r: 0, s: 9_000_000_000_000_000, x: [] })));
    assert.equal(seen.length, 0);
    // The largest span allowed completes at once (no member list to hold it for), and the run's view
    // lists only the slots it shows.
    engine.set("/rdzv/big/open", enc("0"));
    engine.set("/rdzv/big/r0/outcome", enc(JSON.stringify({ r: 0, s: MAX_SPAN, x: [] })));
    assert.deepEqual(
      seen.map((e) => [e.type, e.worldSize]),
      [["completed", MAX_SPAN]],
    );
    const [view] = await inspectRun(engineKeyReader(engine, "/"), "big", { maxSlots: 10 });
    assert.equal(view?.participants.length, 10);
    assert.deepEqual(logged, []);
  });

  it("reads a TCP store server's byte-string keys as UTF-8: a run id past ASCII keeps its name", () => {
    const engine = new KvEngine();
    const monitor = new RendezvousMonitor();
    monitor.attach(engine);
    const wire = (key: string) => Buffer.from(`/${key}`, "utf8").toString("latin1");
    engine.set(wire("rdzv/ünï/open"), enc("0"));
    engine.set(wire("rdzv/ünï/r0/outcome"), enc(encodeOutcome({ kind: "closed", round: 0 })));
    assert.deepEqual(
      monitor.timeline("ünï").map((e) => [e.runId, e.type]),
      [["ünï", "closed"]],
    );
  });
});

/**
 * `count` states of PyTorch 2.x's own `_RendezvousState` as its c10d backend writes them (base64 of the
 * pickle), each complete with `nodes` + i participants.
 */
async function torchStates(nodes: number, count: number): Promise<Uint8Array[]> {
  const torch = await findTorch2();
  const script = `
import base64, pickle, sys
from datetime import datetime, timezone
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import _NodeDesc, _RendezvousState
now = datetime.now(timezone.utc)
for i in range(${count}):
    s = _RendezvousState()
    s.round = 1
    s.complete = True
    for n in range(${nodes} + i):
        node = _NodeDesc(f"host-{n:05d}.cluster.example", 1000 + n, 0)
        s.participants[node] = n
        s.last_heartbeats[node] = now
    print(base64.b64encode(pickle.dumps(s)).decode())
`;
  const { stdout } = await promisify(execFile)(torch.python, ["-c", script], { maxBuffer: 256 << 20 });
  return stdout
    .trim()
    .split("\n")
    .map((line) => enc(line));
}

describe("RendezvousMonitor: PyTorch states written faster than they decode", () => {
  it("decodes the latest state per run in turn, not every write (torchrun writes its state on every heartbeat)", async () => {
    // 2,000-node states take milliseconds each to decode; torchrun's 2,000 agents would write 400 a second.
    const states = await torchStates(2000, 30);
    const monitor = new RendezvousMonitor();
    const decoded: string[] = [];
    monitor.on("changed", (runId) => decoded.push(runId));
    for (const [i, value] of states.entries()) {
      monitor.observe("torch.rendezvous.a", undefined, value);
      if (i % 3 === 0) monitor.observe("torch.rendezvous.b", undefined, value);
    }
    // The first write was decoded at once; the others wait for its turn, kept as the latest per run.
    assert.deepEqual(decoded, ["a"]);
    // (A run keeps its last 1000 events: the joins of its last state's newest nodes end its timeline.)
    const last = (runId: string): string | undefined =>
      monitor
        .timeline(runId)
        .filter((e) => e.type === "joined")
        .at(-1)?.node?.addr;
    const deadline = Date.now() + 60_000;
    while (last("a") !== "host-02028.cluster.example" || last("b") !== "host-02026.cluster.example") {
      assert.ok(Date.now() < deadline, `timelines incomplete: ${decoded.join(",")}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    // Each run's last state was decoded, once, and nothing between: b (waiting first) and a once more.
    assert.deepEqual(decoded, ["a", "b", "a"]);
  });
});
