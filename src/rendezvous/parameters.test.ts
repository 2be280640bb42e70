import assert from "node:assert/strict";
import { hostname } from "node:os";
import { describe, it } from "node:test";
import { ErrorCode } from "../errors.js";
import type { RendezvousParameters } from "./api.js";
import {
  configBool,
  configDurationMs,
  configInt,
  DEFAULT_RENDEZVOUS_TIMEOUTS,
  parseRendezvousConfig,
  resolveRendezvousSettings,
  validateRendezvousParameters,
} from "./parameters.js";

const base: RendezvousParameters = {
  backend: "c10d",
  endpoint: "localhost:29400",
  runId: "job",
  minNodes: 1,
  maxNodes: 2,
};

const invalid = { code: ErrorCode.InvalidArgument };

function withConfig(config: Record<string, string | number | boolean>): RendezvousParameters {
  return { ...base, config };
}

describe("parseRendezvousConfig", () => {
  it("parses key=value pairs, trimming both", () => {
    assert.deepEqual(parseRendezvousConfig(" join_timeout = 60 , is_host=false,x=a=b "), {
      join_timeout: "60",
      is_host: "false",
      x: "a=b",
    });
  });

  it("returns {} for blank input and lets a later key win", () => {
    assert.deepEqual(parseRendezvousConfig("   "), {});
    assert.deepEqual(parseRendezvousConfig("a=1,a=2"), { a: "2" });
  });

  it("rejects missing keys and values", () => {
    for (const bad of ["a", "a=", "=1", "a=1,,b=2", "a=1,", " = "]) {
      assert.throws(() => parseRendezvousConfig(bad), invalid, bad);
    }
  });

  it("keeps __proto__ as a plain key", () => {
    const parsed = parseRendezvousConfig("__proto__=x");
    assert.equal(Object.getPrototypeOf(parsed), Object.prototype);
    assert.equal(Object.hasOwn(parsed, "__proto__"), true);
  });
});

describe("validateRendezvousParameters", () => {
  it("returns a frozen copy of good parameters", () => {
    const valid = validateRendezvousParameters({ ...base, config: { a: 1 } });
    assert.equal(Object.isFrozen(valid), true);
    assert.equal(Object.isFrozen(valid.config), true);
    assert.deepEqual({ ...valid, config: { ...valid.config } }, { ...base, config: { a: 1 } });
  });

  it("does not check whether the backend exists", () => {
    assert.doesNotThrow(() => validateRendezvousParameters({ ...base, backend: "nope" }));
  });

  it("names every bad value in one error", () => {
    const bad = { ...base, backend: "", runId: "", minNodes: 0, maxNodes: 1.5 };
    assert.throws(
      () => validateRendezvousParameters(bad),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, ErrorCode.InvalidArgument);
        for (const word of ["backend", "runId", "minNodes", "maxNodes"])
          assert.match(err.message, new RegExp(word));
        return true;
      },
    );
  });

  it("rejects maxNodes < minNodes, non-integers and bad config values", () => {
    assert.throws(() => validateRendezvousParameters({ ...base, minNodes: 3, maxNodes: 2 }), invalid);
    assert.throws(() => validateRendezvousParameters({ ...base, minNodes: 1.5 }), invalid);
    assert.throws(() => validateRendezvousParameters({ ...base, minNodes: Number.NaN }), invalid);
    assert.throws(() => validateRendezvousParameters({ ...base, localAddr: "" }), invalid);
    const badConfig = { ...base, config: { a: null } } as unknown as RendezvousParameters;
    assert.throws(() => validateRendezvousParameters(badConfig), invalid);
    assert.throws(() => validateRendezvousParameters(null as unknown as RendezvousParameters), invalid);
  });
});

describe("resolveRendezvousSettings", () => {
  it("applies PyTorch's defaults", () => {
    const s = resolveRendezvousSettings(base);
    assert.equal(Object.isFrozen(s), true);
    assert.equal(s.joinTimeoutMs, 600_000);
    assert.equal(s.lastCallTimeoutMs, 30_000);
    assert.equal(s.closeTimeoutMs, 30_000);
    assert.equal(s.heartbeatTimeoutMs, 5_000);
    assert.equal(s.keepAliveIntervalMs, 5_000);
    assert.equal(s.keepAliveMaxAttempts, 3);
    assert.equal(s.readTimeoutMs, 60_000);
    assert.equal(s.storeTimeoutMs, DEFAULT_RENDEZVOUS_TIMEOUTS.storeTimeoutMs);
    assert.equal(s.storeUnreachableTimeoutMs, 600_000); // join_timeout's default, above 5 min
    assert.equal(s.isHost, undefined);
    assert.equal(s.localAddr, hostname());
    assert.equal(s.stickyRanks, false);
    assert.equal(s.useAgentStore, false);
    assert.equal(s.rank, undefined);
    assert.equal(s.worldSize, undefined);
    assert.deepEqual({ ...s.raw }, {});
  });

  it("parses strings from a command line", () => {
    const config = parseRendezvousConfig(
      "join_timeout=60,last_call_timeout=1.5,close_timeout=2,heartbeat_timeout=3,keep_alive_interval=0.25," +
        "keep_alive_max_attempt=7,read_timeout=9,timeout=11,is_host=False,local_addr=10.0.0.1," +
        "sticky_ranks=YES,use_agent_store=1,rank=2,world_size=4,protocol=https",
    );
    const s = resolveRendezvousSettings({ ...base, config });
    assert.equal(s.joinTimeoutMs, 60_000);
    assert.equal(s.lastCallTimeoutMs, 1500);
    assert.equal(s.closeTimeoutMs, 2000);
    assert.equal(s.heartbeatTimeoutMs, 3000);
    assert.equal(s.keepAliveIntervalMs, 250);
    assert.equal(s.keepAliveMaxAttempts, 7);
    assert.equal(s.readTimeoutMs, 9000);
    assert.equal(s.storeTimeoutMs, 11_000);
    assert.equal(s.isHost, false);
    assert.equal(s.localAddr, "10.0.0.1");
    assert.equal(s.stickyRanks, true);
    assert.equal(s.useAgentStore, true);
    assert.equal(s.rank, 2);
    assert.equal(s.worldSize, 4);
    assert.equal(s.raw.protocol, "https");
    // Without a store_unreachable_timeout of its own: 5 min, above a join_timeout of 60 s.
    assert.equal(s.storeUnreachableTimeoutMs, 300_000);
  });

  it("store_unreachable_timeout: the larger of 5 min and join_timeout, unless given", () => {
    assert.equal(
      resolveRendezvousSettings(withConfig({ join_timeout: 900 })).storeUnreachableTimeoutMs,
      900_000,
    );
    const given = withConfig({ join_timeout: 900, store_unreachable_timeout: "2.5" });
    assert.equal(resolveRendezvousSettings(given).storeUnreachableTimeoutMs, 2500);
    assert.throws(() => resolveRendezvousSettings(withConfig({ store_unreachable_timeout: 0 })), invalid);
  });

  it("takes numbers and booleans from code", () => {
    const s = resolveRendezvousSettings(
      withConfig({ join_timeout: 0.5, is_host: true, sticky_ranks: 0, keep_alive_max_attempt: 1, rank: 0 }),
    );
    assert.equal(s.joinTimeoutMs, 500);
    assert.equal(s.isHost, true);
    assert.equal(s.stickyRanks, false);
    assert.equal(s.keepAliveMaxAttempts, 1);
    assert.equal(s.rank, 0);
  });

  it("prefers params.localAddr over config local_addr", () => {
    const s = resolveRendezvousSettings({
      ...base,
      localAddr: "a.example",
      config: { local_addr: "b.example" },
    });
    assert.equal(s.localAddr, "a.example");
  });

  it("accepts heartbeat as an alias of keep_alive_interval", () => {
    assert.equal(resolveRendezvousSettings(withConfig({ heartbeat: 2 })).keepAliveIntervalMs, 2000);
    assert.equal(
      resolveRendezvousSettings(withConfig({ heartbeat: "2", keep_alive_interval: 2 })).keepAliveIntervalMs,
      2000,
    );
    assert.throws(
      () => resolveRendezvousSettings(withConfig({ heartbeat: 2, keep_alive_interval: 3 })),
      invalid,
    );
  });

  it("names every bad config value in one error", () => {
    const config = {
      join_timeout: "soon",
      is_host: "maybe",
      keep_alive_max_attempt: 0,
      rank: -1,
      timeout: 0,
    };
    assert.throws(
      () => resolveRendezvousSettings(withConfig(config)),
      (err: Error & { code?: string }) => {
        assert.equal(err.code, ErrorCode.InvalidArgument);
        for (const key of Object.keys(config)) assert.match(err.message, new RegExp(`'${key}'`));
        return true;
      },
    );
  });

  it("rejects bad parameters before looking at the config", () => {
    assert.throws(() => resolveRendezvousSettings({ ...base, runId: "" }), invalid);
  });
});

describe("config value parsers", () => {
  it("configBool follows get_as_bool", () => {
    for (const t of [true, 1, "1", "true", "T", "yes", "Y", " True "])
      assert.equal(configBool({ k: t }, "k"), true);
    for (const f of [false, 0, "0", "false", "F", "no", "N"]) assert.equal(configBool({ k: f }, "k"), false);
    for (const bad of [2, "", "on", "2"]) assert.throws(() => configBool({ k: bad }, "k"), invalid);
    assert.equal(configBool({}, "k"), undefined);
  });

  it("configInt accepts integral numbers and decimal strings only", () => {
    assert.equal(configInt({ k: " 42 " }, "k"), 42);
    assert.equal(configInt({ k: -3 }, "k"), -3);
    for (const bad of [1.5, "1.5", "0x10", "", true, "1e3"])
      assert.throws(() => configInt({ k: bad }, "k"), invalid);
    assert.throws(() => configInt({ k: 0 }, "k", 1), invalid);
  });

  it("configDurationMs takes positive seconds", () => {
    assert.equal(configDurationMs({ k: "1.25" }, "k"), 1250);
    assert.equal(configDurationMs({ k: ".5" }, "k"), 500);
    assert.equal(configDurationMs({ k: "1e1" }, "k"), 10_000);
    assert.equal(configDurationMs({ k: 3 }, "k"), 3000);
    for (const bad of [0, -1, "0", "-1", "abc", "", true, Number.POSITIVE_INFINITY, "0x10", 0.0001]) {
      assert.throws(() => configDurationMs({ k: bad }, "k"), invalid, String(bad));
    }
  });

  it("ignores inherited properties", () => {
    assert.equal(configInt({}, "constructor"), undefined);
  });
});
