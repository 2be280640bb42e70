/**
 * `RENDEZVOUS_CONFIG_KEYS` (which `rdzv run` warns against) lists every config key rdzv's settings and
 * built-in backends read: found here in their sources, so that a key added to a backend is never warned
 * about as a typo.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { RENDEZVOUS_CONFIG_KEYS } from "../src/rendezvous/config-keys.js";
import { REPO_ROOT } from "./helpers/torch.js";

/** The keys a source file reads through the config helpers (`configString(raw, "key")`, `seconds("x")`). */
function keysRead(path: string): string[] {
  const text = readFileSync(join(REPO_ROOT, path), "utf8");
  const found = text.matchAll(/(?:config(?:String|Int|Bool|DurationMs)\(\s*\w+,\s*|seconds\()"([a-z_]+)"/g);
  return [...new Set([...found].map((m) => m[1]!))].sort();
}

describe("RENDEZVOUS_CONFIG_KEYS", () => {
  it("lists every key the common settings read", () => {
    const read = keysRead("src/rendezvous/parameters.ts");
    assert.ok(read.includes("join_timeout") && read.includes("world_size"), String(read));
    assert.deepEqual(read, [...RENDEZVOUS_CONFIG_KEYS.common].sort());
  });

  it("lists every key the etcd and redis backends read", () => {
    for (const backend of ["etcd", "redis"] as const) {
      const read = keysRead(`src/backends/${backend}.ts`);
      assert.ok(read.length >= 7, `${backend}: ${String(read)}`);
      assert.deepEqual(read, [...RENDEZVOUS_CONFIG_KEYS[backend]].sort(), backend);
    }
  });

  it("the c10d and static backends read no keys of their own", () => {
    for (const path of ["src/backends/c10d.ts", "src/rendezvous/static-handler.ts"]) {
      assert.deepEqual(keysRead(path), [], path);
    }
  });
});
