import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { ErrorCode } from "../errors.js";
import { bytesToText } from "./bytes.js";
import { MemoryStore } from "./memory-store.js";

describe("MemoryStore", () => {
  it("wakes a blocked get when the key is set", async () => {
    const store = new MemoryStore();
    const pending = store.get("k", { timeoutMs: 1000 });
    await store.set("k", "v");
    assert.equal(bytesToText(await pending), "v");
  });

  it("times out a get with code RDZV_TIMEOUT", async () => {
    const store = new MemoryStore({ timeoutMs: 20 });
    await assert.rejects(store.get("missing"), (err: { code: string }) => err.code === ErrorCode.Timeout);
  });
});
