import assert from "node:assert/strict";
import { hostname, networkInterfaces } from "node:os";
import { describe, it } from "node:test";
import { ErrorCode } from "../errors.js";
import {
  DEFAULT_RENDEZVOUS_PORT,
  defaultLocalAddr,
  formatEndpoint,
  isLoopbackAddress,
  matchesMachineHostname,
  parseRendezvousEndpoint,
  splitRendezvousEndpoint,
} from "./endpoint.js";

const invalid = { code: ErrorCode.InvalidArgument };

describe("parseRendezvousEndpoint", () => {
  it("parses host and host:port", () => {
    assert.deepEqual(parseRendezvousEndpoint("node0"), { host: "node0", port: 29400 });
    assert.deepEqual(parseRendezvousEndpoint("node0.example.com:1234"), {
      host: "node0.example.com",
      port: 1234,
    });
    assert.deepEqual(parseRendezvousEndpoint("10.1.2.3:0"), { host: "10.1.2.3", port: 0 });
    assert.deepEqual(parseRendezvousEndpoint("  my-host_1:65535  "), { host: "my-host_1", port: 65535 });
    assert.deepEqual(parseRendezvousEndpoint("node0", 555), { host: "node0", port: 555 });
  });

  it("treats a blank endpoint as localhost, as PyTorch", () => {
    assert.deepEqual(parseRendezvousEndpoint(""), { host: "localhost", port: DEFAULT_RENDEZVOUS_PORT });
    assert.deepEqual(parseRendezvousEndpoint("  ", 7), { host: "localhost", port: 7 });
  });

  it("parses IPv6 with and without brackets", () => {
    assert.deepEqual(parseRendezvousEndpoint("[::1]:29500"), { host: "::1", port: 29500 });
    assert.deepEqual(parseRendezvousEndpoint("[::1]"), { host: "::1", port: 29400 });
    assert.deepEqual(parseRendezvousEndpoint("[fe80::1%eth0]:1"), { host: "fe80::1%eth0", port: 1 });
    // A whole IPv6 address is a host (PyTorch would read "1" as the port of host ":").
    assert.deepEqual(parseRendezvousEndpoint("::1"), { host: "::1", port: 29400 });
    assert.deepEqual(parseRendezvousEndpoint("2001:db8::7"), { host: "2001:db8::7", port: 29400 });
    // Not an address as a whole: the last group is the port, as PyTorch's rsplit.
    assert.deepEqual(parseRendezvousEndpoint("::1:29500"), { host: "::1", port: 29500 });
  });

  it("rejects bad ports", () => {
    for (const bad of ["h:", "h:abc", "h:65536", "h:123456", "h:-1", "h: 1", "[::1]:", "[::1]:x"]) {
      assert.throws(() => parseRendezvousEndpoint(bad), invalid, bad);
    }
  });

  it("rejects bad hosts and brackets", () => {
    for (const bad of [":29400", "[]:1", "[::1", "[::1]x", "a b:1", "h/x:1", "user@h:1"]) {
      assert.throws(() => parseRendezvousEndpoint(bad), invalid, bad);
    }
  });

  it("rejects a bad default port", () => {
    assert.throws(() => parseRendezvousEndpoint("h", 70000), invalid);
    assert.throws(() => parseRendezvousEndpoint("h", -1), invalid);
  });

  it("splitRendezvousEndpoint leaves a missing port undefined", () => {
    assert.deepEqual(splitRendezvousEndpoint("h"), { host: "h", port: undefined });
    assert.deepEqual(splitRendezvousEndpoint("h:1"), { host: "h", port: 1 });
    assert.deepEqual(splitRendezvousEndpoint(""), { host: "localhost", port: undefined });
  });
});

describe("formatEndpoint", () => {
  it("brackets IPv6 and round-trips with the parser", () => {
    assert.equal(formatEndpoint("node0", 1), "node0:1");
    assert.equal(formatEndpoint("::1", 29400), "[::1]:29400");
    assert.equal(formatEndpoint("[::1]", 29400), "[::1]:29400");
    for (const text of ["node0:1", "[::1]:29400", "10.0.0.1:80"]) {
      const { host, port } = parseRendezvousEndpoint(text);
      assert.equal(formatEndpoint(host, port), text);
    }
    assert.throws(() => formatEndpoint("h", 1.5), invalid);
  });
});

describe("isLoopbackAddress", () => {
  it("knows loopback addresses", () => {
    for (const a of ["127.0.0.1", "127.255.0.9", "::1", "0:0:0:0:0:0:0:1", "::ffff:127.0.0.1"]) {
      assert.equal(isLoopbackAddress(a), true, a);
    }
    for (const a of ["10.0.0.1", "::", "localhost", "fe80::1", "128.0.0.1"])
      assert.equal(isLoopbackAddress(a), false, a);
  });
});

describe("matchesMachineHostname", () => {
  it("matches localhost, loopback, the hostname and local interface addresses", async () => {
    for (const host of ["localhost", "LOCALHOST", "127.0.0.1", "127.1.2.3", "::1", "[::1]", hostname()]) {
      assert.equal(await matchesMachineHostname(host), true, host);
    }
    for (const entries of Object.values(networkInterfaces())) {
      for (const entry of entries ?? []) {
        assert.equal(await matchesMachineHostname(entry.address), true, entry.address);
      }
    }
  });

  it("does not match foreign addresses or unresolvable names", async () => {
    for (const host of ["192.0.2.1", "2001:db8::1", "no-such-host.invalid", ""]) {
      assert.equal(await matchesMachineHostname(host, { timeoutMs: 2000 }), false, host);
    }
  });
});

describe("defaultLocalAddr", () => {
  it("is the hostname", () => {
    assert.equal(defaultLocalAddr(), hostname());
  });
});
