import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import type { RendezvousInfo } from "../rendezvous/api.js";
import { registerBuiltinRendezvousHandlers } from "../rendezvous/builtins.js";
import type { DynamicRendezvousHandler } from "../rendezvous/dynamic-handler.js";
import { createRendezvousHandler } from "../rendezvous/registry.js";
import { KvEngine } from "../store/kv-engine.js";
import { connectTCPStore, type TCPStore } from "../store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../store/tcp/server.js";
import { inspectAllRuns, inspectRun, listRunRefs } from "./inspector.js";
import { engineKeyReader, storeKeyReader } from "./key-reader.js";
import { RendezvousMonitor } from "./monitor.js";
import { findRunIds, parseRdzvKey, parseTorchKey } from "./run-keys.js";
import type { RunView } from "./run-view.js";
import { TORCH_NULL_SENTINEL } from "./torch-state.js";

registerBuiltinRendezvousHandlers();

/** Polls `probe` until it returns a value (not undefined), for up to 30 s. */
async function until<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Drops what changes between two reads (counters move with keep-alives). */
function stable(views: RunView[]): unknown {
  return views.map((v) => ({
    ...v,
    participants: v.participants.map(({ keepAlives: _k, lastKeepAliveAt: _l, expiresAt: _e, ...p }) => p),
    waiting: v.waiting.map(({ keepAlives: _k, lastKeepAliveAt: _l, expiresAt: _e, ...p }) => p),
  }));
}

describe("run inspector over rdzv's dynamic rendezvous", () => {
  let server: TCPStoreServer;
  let client: TCPStore;
  const monitor = new RendezvousMonitor();
  const handlers: DynamicRendezvousHandler[] = [];
  before(async () => {
    server = await createTCPStoreServer({ port: 0 });
    monitor.attach(server.engine);
    client = await connectTCPStore({ host: "127.0.0.1", port: server.port });
  });
  after(async () => {
    for (const h of handlers) await h.shutdown().catch(() => undefined);
    await client?.close();
    await server?.close();
  });

  const node = async (runId: string): Promise<DynamicRendezvousHandler> => {
    const h = (await createRendezvousHandler({
      backend: "c10d",
      endpoint: `127.0.0.1:${server.port}`,
      runId,
      minNodes: 3,
      maxNodes: 3,
      localAddr: "127.0.0.1",
      config: { is_host: false, last_call_timeout: 0.2, keep_alive_interval: 0.2, join_timeout: 60 },
    })) as DynamicRendezvousHandler;
    handlers.push(h);
    return h;
  };

  it("shows joining, complete with a wait list, an ended round re-forming, and closed; the same through a TCPStore client", async () => {
    const engine = engineKeyReader(server.engine);
    const remote = storeKeyReader(client);
    const view = async () => (await inspectRun(engine, "job", { keepAlives: monitor }))[0];
    const [a, b, c, late] = [await node("job"), await node("job"), await node("job"), await node("job")];
    const rounds: Promise<RendezvousInfo>[] = [a.nextRendezvous(), b.nextRendezvous()];
    const joining = await until("two joiners", async () => {
      const v = await view();
      return v?.participants.length === 2 && v.participants.every((p) => p.addr !== "") ? v : undefined;
    });
    assert.equal(joining.state, "joining");
    assert.equal(joining.round, 0);
    assert.deepEqual(joining.participants.map((p) => p.id).sort(), [a.node.id, b.node.id].sort());
    assert.deepEqual(
      joining.participants.map((p) => p.slot),
      [0, 1],
    );
    assert.ok(
      joining.participants.every(
        (p) => p.status === "alive" && p.addr === "127.0.0.1" && p.pid === process.pid,
      ),
    );
    assert.ok(joining.coordinator === 0 || joining.coordinator === 1);

    rounds.push(c.nextRendezvous());
    const infos = await Promise.all(rounds);
    void late.nextRendezvous().catch(() => undefined);
    const complete = await until("the late node waiting", async () => {
      const v = await view();
      return v?.state === "complete" && v.waiting.length === 1 && v.waiting[0]?.addr !== "" ? v : undefined;
    });
    const rankOf = new Map([a, b, c].map((h, i) => [h.node.id, infos[i]!.rank]));
    assert.deepEqual(
      complete.participants.map((p) => [p.id, p.rank]),
      complete.participants.map((p) => [p.id, rankOf.get(p.id)]),
    );
    assert.deepEqual(complete.participants.map((p) => p.rank).sort(), [0, 1, 2]);
    assert.equal(complete.waiting[0]?.id, late.node.id);
    assert.equal(complete.round, 0);
    await until("keep-alive timing", async () =>
      (await view())?.participants.every((p) => p.expiresAt !== undefined) ? true : undefined,
    );
    assert.deepEqual(stable(await inspectRun(remote, "job")), stable(await inspectRun(engine, "job")));

    await c.shutdown();
    const reforming = await until("round 0 ended", async () => {
      const v = await view();
      return v?.state === "joining" ? v : undefined;
    });
    assert.equal(reforming.round, 1);
    assert.deepEqual(
      reforming.participants.map((p) => p.id),
      [late.node.id],
    );
    assert.ok(
      reforming.notes.some((n) => /round 0 ended \(slot \d left\); round 1 re-forms/.test(n)),
      reforming.notes.join("; "),
    );
    assert.deepEqual(stable(await inspectRun(remote, "job")), stable(await inspectRun(engine, "job")));

    await a.setClosed();
    const closed = await until("closed", async () =>
      (await view())?.state === "closed" ? await view() : undefined,
    );
    assert.equal(closed.participants.length, 0);
    assert.deepEqual(stable(await inspectAllRuns(remote)), stable(await inspectAllRuns(engine)));
    assert.deepEqual(await listRunRefs(remote), [{ runId: "job", source: "rdzv" }]);

    const types = monitor.timeline("job").map((e) => e.type);
    // a, b, c and the late node joined; round 0 completed; c left; closing shows once.
    assert.deepEqual(types.filter((t) => t === "joined").length, 4, types.join());
    assert.ok(types.indexOf("completed") > types.indexOf("joined"));
    assert.ok(types.includes("left"));
    assert.equal(types.filter((t) => t === "closed").length, 1, types.join());
  });

  it("lists both layouts' runs by id (code units), PyTorch's first where an id is in both", async () => {
    const id = fc.stringMatching(/^[a-cA-C0-9.-]{1,4}$/);
    await fc.assert(
      fc.asyncProperty(fc.uniqueArray(id), fc.uniqueArray(id), async (rdzv, pytorch) => {
        const engine = new KvEngine();
        for (const runId of rdzv) engine.set(`rdzv/${runId}/open`, new Uint8Array([48]));
        for (const runId of pytorch) engine.set(`torch.rendezvous.${runId}`, new Uint8Array([48]));
        const expected = [
          ...pytorch.map((runId) => ({ runId, source: "pytorch" as const })),
          ...rdzv.map((runId) => ({ runId, source: "rdzv" as const })),
        ].sort((a, b) => (a.runId < b.runId ? -1 : a.runId > b.runId ? 1 : a.source < b.source ? -1 : 1));
        assert.deepEqual(await listRunRefs(engineKeyReader(engine, "", { byteKeys: false })), expected);
      }),
    );
  });

  it("reads non-ASCII run ids from the engine as the TCPStore client names them (rdzv's and PyTorch's layout)", async () => {
    const id = "ünï-日本";
    const engine = engineKeyReader(server.engine);
    const remote = storeKeyReader(client);
    const members = [await node(id), await node(id), await node(id)];
    await Promise.all(members.map((h) => h.nextRendezvous()));
    // PyTorch's state key as its c10d backend first writes it, before any node wrote a state.
    await client.set(`torch.rendezvous.${id}`, TORCH_NULL_SENTINEL);
    server.engine.set("/rdzv/\xff\xfe/open", new Uint8Array([48])); // bytes that are no UTF-8 text
    const refs = (await listRunRefs(engine)).filter((r) => r.runId !== "job");
    assert.deepEqual(refs, [
      { runId: id, source: "pytorch" },
      { runId: id, source: "rdzv" },
    ]);
    const views = await inspectRun(engine, id);
    assert.deepEqual(
      views.map((v) => [v.runId, v.source, v.state, v.participants.length]),
      [
        [id, "rdzv", "complete", 3],
        [id, "pytorch", "idle", 0],
      ],
    );
    assert.deepEqual(stable(views), stable(await inspectRun(remote, id)));
    // The same ids on an engine whose keys are the text itself (a MemoryStore's).
    const text = new KvEngine();
    text.set(`rdzv/${id}/open`, new Uint8Array([48]));
    const plain = engineKeyReader(text, "", { byteKeys: false });
    assert.deepEqual(await listRunRefs(plain), [{ runId: id, source: "rdzv" }]);
    assert.equal((await inspectRun(plain, id)).length, 1);
    for (const h of members) await h.shutdown();
  });

  it("reads nothing into a run that is not there, and refuses an empty run id", async () => {
    assert.deepEqual(await inspectRun(engineKeyReader(server.engine), "nope"), []);
    await assert.rejects(inspectRun(engineKeyReader(server.engine), ""), { code: "RDZV_INVALID_ARGUMENT" });
  });
});

describe("run keys", () => {
  it("parses rdzv's layout and PyTorch's state key, not the keys of a round's own store", () => {
    assert.deepEqual(parseRdzvKey("rdzv/job/open"), { runId: "job", kind: "open" });
    assert.deepEqual(parseRdzvKey("rdzv/a/b/r12/outcome"), { runId: "a/b", kind: "outcome", round: 12 });
    assert.deepEqual(parseRdzvKey("rdzv/job/r3/gone/17"), { runId: "job", kind: "gone", round: 3, slot: 17 });
    assert.equal(parseRdzvKey("rdzv/job/r0/store/x/r1/hb/2"), undefined);
    assert.equal(parseRdzvKey("rdzv/job/r0/store/open"), undefined);
    assert.equal(parseRdzvKey("rdzv/job/r0/hb/x"), undefined);
    // Numbers as the backend writes them: the monitor's timeline, views and the run list read the same keys.
    assert.deepEqual(parseRdzvKey("rdzv/job/r0/gone/0"), { runId: "job", kind: "gone", round: 0, slot: 0 });
    for (const odd of [
      "rdzv/job/r01/gone/1",
      "rdzv/job/r1/gone/01",
      "rdzv/job/r00/outcome",
      "rdzv/job/r1/node/007",
    ])
      assert.equal(parseRdzvKey(odd), undefined, odd);
    assert.equal(parseTorchKey("torch.rendezvous.job"), "job");
    assert.equal(parseTorchKey("torch.rendezvous.job.0/MASTER_ADDR"), undefined);
    assert.equal(parseTorchKey("torch.rendezvous."), undefined);
    assert.deepEqual(
      findRunIds([
        "rdzv/b/open",
        "rdzv/a/open",
        "rdzv/a/r0/tickets",
        "rdzv/a/r0/store/z/open",
        "torch.rendezvous.t",
        "x",
      ]),
      { rdzv: ["a", "b"], pytorch: ["t"] },
    );
  });
});
