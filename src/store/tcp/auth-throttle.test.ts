/** The per-address wrong-token throttle, its address keys and the per-address connection cap (pure, fake clock). */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { describe, it } from "node:test";
import { AddressCap } from "./address-cap.js";
import { addressKey, isLoopbackKey } from "./address-key.js";
import { createAuthThrottle } from "./auth-throttle.js";

function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return {
    now: () => t,
    advance: (ms) => {
      t += ms;
    },
  };
}

const digestOf = (token: string): Buffer => createHash("sha256").update(token).digest();

describe("addressKey", () => {
  it("keeps IPv4, unmaps IPv4-mapped IPv6, and keys other IPv6 addresses by their /64", () => {
    assert.equal(addressKey("10.1.2.3"), "10.1.2.3");
    assert.equal(addressKey("::ffff:10.1.2.3"), "10.1.2.3");
    assert.equal(addressKey("::FFFF:7f00:1"), "127.0.0.1");
    assert.equal(addressKey("2001:db8:0:1::5"), "2001:db8:0:1::/64");
    assert.equal(addressKey("2001:0db8:0000:0001:ffff:1:2:3"), "2001:db8:0:1::/64");
    assert.equal(addressKey("fe80::1%eth0"), "fe80:0:0:0::/64");
    assert.equal(addressKey("64:ff9b::192.0.2.1"), "64:ff9b:0:0::/64");
    assert.equal(addressKey("::1"), "::1");
    assert.equal(addressKey(undefined), "unknown");
    assert.equal(addressKey("not an address"), "not an address");
  });

  it("tells loopback keys", () => {
    for (const a of ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.2"])
      assert.ok(isLoopbackKey(addressKey(a)), a);
    for (const a of ["10.0.0.1", "2001:db8::1", "::2", "unknown", "127.example"]) {
      assert.ok(!isLoopbackKey(addressKey(a)), a);
    }
  });
});

describe("AuthThrottle", () => {
  it("locks an address out for windowMs once it used up its budget, then gives it a full one", () => {
    const c = clock();
    const throttle = createAuthThrottle({ maxFailures: 3, windowMs: 60_000, now: c.now });
    assert.equal(throttle.failed("10.0.0.1").lockedMs, 0);
    assert.equal(throttle.failed("10.0.0.1").lockedMs, 0);
    assert.equal(throttle.retryAfterMs("10.0.0.1"), 0);
    assert.deepEqual(throttle.failed("10.0.0.1"), { key: "10.0.0.1", lockedMs: 60_000, repeated: false });
    assert.equal(throttle.retryAfterMs("10.0.0.1"), 60_000);
    assert.equal(throttle.retryAfterMs("10.0.0.2"), 0, "another address is not affected");
    c.advance(59_999);
    assert.equal(throttle.retryAfterMs("10.0.0.1"), 1);
    c.advance(1);
    assert.equal(throttle.retryAfterMs("10.0.0.1"), 0);
    assert.equal(throttle.failed("10.0.0.1").lockedMs, 0);
    assert.equal(throttle.failed("10.0.0.1").lockedMs, 0);
    assert.equal(throttle.failed("10.0.0.1").lockedMs, 60_000);
  });

  it("locks a burst whose wrong tokens are a few ms apart, as on a real clock", () => {
    // The refill is continuous: the budget was left a fraction short of empty, and never locked.
    const c = clock();
    const throttle = createAuthThrottle({ maxFailures: 2, windowMs: 60_000, now: c.now });
    throttle.failed("10.0.0.1");
    c.advance(3);
    assert.equal(throttle.failed("10.0.0.1").lockedMs, 60_000);
  });

  it("never locks an address whose wrong tokens come no faster than the refill", () => {
    const c = clock();
    const throttle = createAuthThrottle({ maxFailures: 10, windowMs: 60_000, now: c.now });
    for (let i = 0; i < 200; i++) {
      assert.equal(throttle.failed("10.0.0.1").lockedMs, 0, `failure ${i}`);
      c.advance(6_000);
    }
    // A burst on top of a drained budget still locks.
    for (let i = 0; i < 10; i++) throttle.failed("10.0.0.1");
    assert.equal(throttle.retryAfterMs("10.0.0.1"), 60_000);
  });

  it("counts every address of an IPv6 /64 as one, and an IPv4-mapped address as its IPv4 one", () => {
    const throttle = createAuthThrottle({ maxFailures: 2, now: clock().now });
    throttle.failed("2001:db8:0:1::a");
    throttle.failed("2001:db8:0:1:ffff::b");
    assert.ok(throttle.retryAfterMs("2001:db8:0:1::c") > 0);
    assert.equal(throttle.retryAfterMs("2001:db8:0:2::a"), 0);
    throttle.failed("192.0.2.7");
    throttle.failed("::ffff:192.0.2.7");
    assert.ok(throttle.retryAfterMs("192.0.2.7") > 0);
  });

  it("tracks at most maxAddresses, forgetting the oldest, and forgets recovered addresses", () => {
    const c = clock();
    const throttle = createAuthThrottle({ maxFailures: 2, windowMs: 1000, maxAddresses: 100, now: c.now });
    // A flood of wrong tokens from 100,000 addresses (spoofed, or a botnet).
    for (let i = 0; i < 100_000; i++) {
      throttle.failed(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
      throttle.failed(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`);
      assert.ok(throttle.tracked <= 100);
    }
    assert.equal(throttle.tracked, 100);
    // The most recent are still locked out; the first were forgotten.
    assert.ok(throttle.retryAfterMs("10.1.134.159") > 0); // address 99,999
    assert.equal(throttle.retryAfterMs("10.0.0.0"), 0);
    c.advance(1000);
    throttle.failed("192.0.2.1");
    assert.equal(throttle.tracked, 1, "lockouts over and budgets refilled: forgotten");
  });

  it("counts a wrong token an address presented within windowMs once; distinct ones each count", () => {
    const c = clock();
    const throttle = createAuthThrottle({ maxFailures: 3, windowMs: 60_000, now: c.now });
    const stale = digestOf("stale");
    assert.deepEqual(throttle.failed("10.0.0.1", stale), { key: "10.0.0.1", lockedMs: 0, repeated: false });
    for (let i = 0; i < 100; i++) {
      assert.deepEqual(throttle.failed("10.0.0.1", stale), { key: "10.0.0.1", lockedMs: 0, repeated: true });
      c.advance(100);
    }
    assert.equal(throttle.retryAfterMs("10.0.0.1"), 0);
    // The same token from another address is that address's first.
    assert.equal(throttle.failed("10.0.0.2", stale).repeated, false);
    // New guesses count: two more empty the budget of 3.
    assert.equal(throttle.failed("10.0.0.1", digestOf("a")).lockedMs, 0);
    assert.equal(throttle.failed("10.0.0.1", digestOf("b")).lockedMs, 60_000);
    // A call without a digest always counts (every one a new token, as far as the throttle knows).
    const plain = createAuthThrottle({ maxFailures: 2, now: c.now });
    plain.failed("10.0.0.1");
    assert.equal(plain.failed("10.0.0.1").lockedMs, 60_000);
  });

  it("counts a repeated wrong token again once windowMs passed since it was counted", () => {
    const c = clock();
    const throttle = createAuthThrottle({ maxFailures: 10, windowMs: 60_000, now: c.now });
    const stale = digestOf("stale");
    throttle.failed("10.0.0.1", stale);
    c.advance(59_999);
    assert.equal(throttle.failed("10.0.0.1", stale).repeated, true);
    c.advance(1);
    assert.equal(throttle.failed("10.0.0.1", stale).repeated, false);
  });

  it("remembers a bounded number of digests per address; a forgotten one counts again", () => {
    const c = clock();
    const throttle = createAuthThrottle({ maxFailures: 1000, windowMs: 60_000, now: c.now });
    for (let i = 0; i < 100; i++)
      assert.equal(throttle.failed("10.0.0.1", digestOf(`g${i}`)).repeated, false);
    assert.equal(throttle.failed("10.0.0.1", digestOf("g99")).repeated, true, "the latest are kept");
    assert.equal(throttle.failed("10.0.0.1", digestOf("g0")).repeated, false, "the oldest were forgotten");
  });

  it("does nothing with maxFailures 0, and checks its options", () => {
    const throttle = createAuthThrottle({ maxFailures: 0 });
    for (let i = 0; i < 100; i++) assert.equal(throttle.failed("10.0.0.1").lockedMs, 0);
    assert.equal(throttle.retryAfterMs("10.0.0.1"), 0);
    assert.equal(throttle.tracked, 0);
    assert.throws(
      () => createAuthThrottle({ maxFailures: -1 }),
      /maxFailures must be a non-negative integer, got -1/,
    );
    assert.throws(() => createAuthThrottle({ windowMs: 0 }), /windowMs must be a positive integer, got 0/);
    assert.throws(() => createAuthThrottle({ maxAddresses: 1.5 }), /maxAddresses must be a positive integer/);
  });
});

describe("AddressCap", () => {
  it("admits max connections per address, refuses more until one is released, logging once a minute", () => {
    const c = clock();
    const cap = new AddressCap(2, true, 60_000, c.now);
    assert.deepEqual(cap.admit("10.0.0.1"), { admitted: true, key: "10.0.0.1" });
    assert.equal(cap.admit("::ffff:10.0.0.1").admitted, true);
    assert.deepEqual(cap.admit("10.0.0.1"), { admitted: false, key: "10.0.0.1", log: true, unlogged: 0 });
    assert.deepEqual(cap.admit("10.0.0.1"), { admitted: false, key: "10.0.0.1", log: false, unlogged: 1 });
    assert.equal(cap.admit("10.0.0.2").admitted, true, "another address");
    c.advance(60_000);
    assert.deepEqual(cap.admit("10.0.0.1"), { admitted: false, key: "10.0.0.1", log: true, unlogged: 1 });
    cap.release("10.0.0.1");
    assert.equal(cap.admit("10.0.0.1").admitted, true);
    cap.release("10.0.0.1");
    cap.release("10.0.0.1");
    cap.release("10.0.0.2");
    assert.equal(cap.tracked, 0, "no entry is kept for an address with nothing open");
  });

  it("does not count loopback addresses unless told to", () => {
    const cap = new AddressCap(1, false, 60_000);
    for (let i = 0; i < 10; i++) {
      assert.equal(cap.admit("127.0.0.1").admitted, true);
      assert.equal(cap.admit("::1").admitted, true);
    }
    assert.equal(cap.tracked, 0);
    const strict = new AddressCap(1, true, 60_000);
    assert.equal(strict.admit("127.0.0.1").admitted, true);
    assert.equal(strict.admit("127.0.0.1").admitted, false);
  });
});
