import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorCode } from "../errors.js";
import type { RendezvousHandler, RendezvousHandlerCreator, RendezvousParameters } from "./api.js";
import {
  createRendezvousHandler,
  listRendezvousBackends,
  RendezvousHandlerRegistry,
  registerRendezvousHandler,
  rendezvousHandlerRegistry,
} from "./registry.js";

const params: RendezvousParameters = {
  backend: "fake",
  endpoint: "localhost:29400",
  runId: "job",
  minNodes: 1,
  maxNodes: 1,
};

function fakeHandler(backend: string, onShutdown: () => void = () => {}): RendezvousHandler {
  return {
    useAgentStore: false,
    getBackend: () => backend,
    getRunId: () => "job",
    nextRendezvous: () => Promise.reject(new Error("not used")),
    isClosed: async () => false,
    setClosed: async () => {},
    numNodesWaiting: async () => 0,
    shutdown: async () => {
      onShutdown();
      return true;
    },
  };
}

const creator: RendezvousHandlerCreator = async (p) => fakeHandler(p.backend);

describe("RendezvousHandlerRegistry", () => {
  it("registers, lists and creates", async () => {
    const registry = new RendezvousHandlerRegistry();
    registry.register("fake", creator);
    registry.register("b", creator);
    assert.deepEqual(registry.list(), ["b", "fake"]);
    assert.equal(registry.has("fake"), true);
    const handler = await registry.create(params);
    assert.equal(handler.getBackend(), "fake");
  });

  it("passes validated, frozen parameters to the creator", async () => {
    const registry = new RendezvousHandlerRegistry();
    let seen: RendezvousParameters | undefined;
    registry.register("fake", async (p) => {
      seen = p;
      return fakeHandler("fake");
    });
    await registry.create({ ...params, config: { a: "1" } });
    assert.equal(Object.isFrozen(seen), true);
    assert.equal(seen?.config?.a, "1");
  });

  it("accepts the same creator twice but refuses a different one", () => {
    const registry = new RendezvousHandlerRegistry();
    registry.register("fake", creator);
    assert.doesNotThrow(() => registry.register("fake", creator));
    assert.throws(() => registry.register("fake", async (p) => fakeHandler(p.backend)), {
      code: ErrorCode.InvalidArgument,
    });
    assert.equal(registry.unregister("fake"), true);
    assert.equal(registry.unregister("fake"), false);
    assert.doesNotThrow(() => registry.register("fake", async (p) => fakeHandler(p.backend)));
  });

  it("rejects empty names and non-function creators", () => {
    const registry = new RendezvousHandlerRegistry();
    assert.throws(() => registry.register("", creator), { code: ErrorCode.InvalidArgument });
    assert.throws(() => registry.register("x", "nope" as unknown as RendezvousHandlerCreator), {
      code: ErrorCode.InvalidArgument,
    });
  });

  it("names the unknown backend and the registered ones", async () => {
    const registry = new RendezvousHandlerRegistry();
    registry.register("alpha", creator);
    registry.register("beta", creator);
    await assert.rejects(
      registry.create({ ...params, backend: "gamma" }),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, ErrorCode.InvalidArgument);
        assert.match(err.message, /gamma/);
        assert.match(err.message, /alpha, beta/);
        return true;
      },
    );
  });

  it("validates parameters before looking up the backend", async () => {
    const registry = new RendezvousHandlerRegistry();
    await assert.rejects(registry.create({ ...params, backend: "nope", minNodes: 0 }), {
      code: ErrorCode.InvalidArgument,
    });
  });

  it("refuses a handler whose backend name differs, shutting it down", async () => {
    const registry = new RendezvousHandlerRegistry();
    let shutdowns = 0;
    registry.register("fake", async () => fakeHandler("other", () => shutdowns++));
    await assert.rejects(registry.create(params), { code: ErrorCode.Rendezvous });
    assert.equal(shutdowns, 1);
  });

  it("passes on what the creator throws", async () => {
    const registry = new RendezvousHandlerRegistry();
    const boom = new Error("boom");
    registry.register("fake", async () => {
      throw boom;
    });
    await assert.rejects(registry.create(params), (err) => err === boom);
  });
});

describe("process-wide registry", () => {
  it("registers through the module functions", async () => {
    const name = "registry-test-backend";
    const own: RendezvousHandlerCreator = async () => fakeHandler(name);
    registerRendezvousHandler(name, own);
    try {
      assert.ok(listRendezvousBackends().includes(name));
      const handler = await createRendezvousHandler({ ...params, backend: name });
      assert.equal(handler.getBackend(), name);
    } finally {
      rendezvousHandlerRegistry.unregister(name);
    }
    assert.ok(!listRendezvousBackends().includes(name));
  });
});
