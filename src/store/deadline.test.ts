import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { keysTimeoutMessage } from "./deadline.js";

describe("keysTimeoutMessage", () => {
  it("names the call, the keys and the timeout, in PyTorch's form", () => {
    assert.equal(keysTimeoutMessage("wait", ["a", "b/c"])(100), "wait timeout after 100ms, keys: a, b/c");
  });

  it("escapes control characters, so a key cannot break a log line", () => {
    assert.equal(keysTimeoutMessage("get", ["x\ny\u0000"])(5), "get timeout after 5ms, keys: x\\x0ay\\x00");
  });

  it("cuts a key at 100 characters (counting code points) and lists 8 keys", () => {
    const long = "é".repeat(101);
    const keys = [long, ...Array.from({ length: 8 }, (_, i) => `k${i}`)];
    assert.equal(
      keysTimeoutMessage("multiGet", keys)(1),
      `multiGet timeout after 1ms, keys: ${"é".repeat(100)}... (101 characters), k0, k1, k2, k3, k4, k5, k6 (and 1 more)`,
    );
  });
});
