/**
 * `parseCounter` against a reference of C++ `std::stoll` (as PyTorch's servers parse ADD's stored
 * value), over arbitrary bytes and over the counters the store writes itself (its fast path).
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { StoreError } from "../errors.js";
import { KvEngine, parseCounter } from "./kv-engine.js";

/** std::stoll by the book: whitespace, sign, digits, the rest ignored; no digits or out of range throws. */
function stoll(value: Uint8Array): bigint | "error" {
  const text = Buffer.from(value).toString("latin1");
  const m = /^[ \t\n\v\f\r]*([+-]?[0-9]+)/.exec(text);
  if (m === null) return "error";
  const n = BigInt(m[1]!);
  return n < -(2n ** 63n) || n > 2n ** 63n - 1n ? "error" : n;
}

function parsed(value: Uint8Array): bigint | "error" {
  try {
    return parseCounter(value, "k");
  } catch (err) {
    assert.ok(err instanceof StoreError);
    return "error";
  }
}

const bytesOf = (chars: string) =>
  fc.array(fc.constantFrom(...chars), { maxLength: 24 }).map((cs) => Buffer.from(cs.join(""), "latin1"));

describe("parseCounter", () => {
  it("agrees with std::stoll on arbitrary bytes, and on digits, signs and spaces", () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.uint8Array({ maxLength: 24 }), bytesOf("0123456789-+ \tx"), bytesOf("0123456789-")),
        (value) => {
          assert.equal(parsed(value), stoll(value));
        },
      ),
      { numRuns: 5000 },
    );
  });

  it("reads every counter the store writes, up to 64-bit bounds", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), (n) => {
        assert.equal(parseCounter(Buffer.from(n.toString(), "latin1"), "k"), n);
      }),
    );
    for (const text of ["0", "-0", "999999999999999", "-999999999999999", "1000000000000000", "-", ""]) {
      assert.equal(parsed(Buffer.from(text)), stoll(Buffer.from(text)), text);
    }
  });

  it("lets add count across the fast path's 15 digits", () => {
    const engine = new KvEngine();
    engine.set("k", Buffer.from("999999999999998"));
    assert.equal(engine.add("k", 1n), 999_999_999_999_999n);
    assert.equal(engine.add("k", 1n), 1_000_000_000_000_000n);
    assert.equal(engine.add("k", 2n ** 62n), 2n ** 62n + 1_000_000_000_000_000n);
    assert.equal(engine.add("k", -(2n ** 62n) - 1_000_000_000_000_001n), -1n);
  });
});
