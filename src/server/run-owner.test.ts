/** Which run a key belongs to (run-owner.ts): what run retention deletes with a run. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { parseRdzvKey, parseTorchKey, runListKey } from "./run-keys.js";
import { type RunOwner, runListKeyOf, runOwnerOf } from "./run-owner.js";

const rdzv = (runId: string): RunOwner => ({ layout: "rdzv", runId });
const pytorch = (runId: string): RunOwner => ({ layout: "pytorch", runId });

describe("runOwnerOf", () => {
  it("gives each key of rdzv's layout to its run, round stores and launcher keys included", () => {
    for (const path of [
      "open",
      "closed",
      "r0/outcome",
      "r12/tickets",
      "r3/lead",
      "r3/ended",
      "r0/node/0",
      "r7/hb/15",
      "r7/gone/2",
      "r0/store/MASTER_ADDR",
      "r4/store/",
      "r4/store/any/thing/open",
      "r4/store/b/r1/store/c",
      "launcher/restarts",
      "launcher/r0.c1/all-done",
      "launcher/failure/r2.c0",
    ]) {
      assert.deepEqual(runOwnerOf(`rdzv/job-1/${path}`), rdzv("job-1"), path);
    }
  });

  it("reads run ids with '/' as the longest id after which the key is a run's", () => {
    assert.deepEqual(runOwnerOf("rdzv/a/b/open"), rdzv("a/b"));
    assert.deepEqual(runOwnerOf("rdzv/a/b/r0/hb/1"), rdzv("a/b"));
    assert.deepEqual(runOwnerOf("rdzv/a/b/launcher/restarts"), rdzv("a/b"));
    assert.deepEqual(runOwnerOf("rdzv/a/launcher/open"), rdzv("a/launcher"));
    // An id that is a path into a round's store names no run: the key is in run "a"'s round store.
    assert.deepEqual(runOwnerOf("rdzv/a/r0/store/x/open"), rdzv("a"));
    assert.deepEqual(runOwnerOf("rdzv/a/r0/store/b/r1/hb/0"), rdzv("a"));
  });

  it("gives no run to keys rdzv does not write, under rdzv/ or elsewhere", () => {
    for (const key of [
      "rdzv/a",
      "rdzv/open",
      "rdzv//open",
      "rdzv/a/notes",
      "rdzv/a/b/c",
      "rdzv/a/r01/outcome",
      "rdzv/a/r0/node/07",
      "rdzv/a/r0/hb",
      "rdzv/a/r0/stor/x",
      "rdzv/a/r0/store",
      "rdzv/a/launcher",
      "rdzv/a/opened",
      "rdzvx/a/open",
      "worker/attempt_0/rank0",
      "a/open",
      "open",
      "",
    ]) {
      assert.equal(runOwnerOf(key), undefined, key);
    }
  });

  it("gives PyTorch's state key and its rounds' store keys to the run, and nothing else", () => {
    assert.deepEqual(runOwnerOf("torch.rendezvous.job"), pytorch("job"));
    assert.deepEqual(runOwnerOf("torch.rendezvous.job.0/MASTER_ADDR"), pytorch("job"));
    assert.deepEqual(runOwnerOf("torch.rendezvous.job.12/torchelastic/agent/x"), pytorch("job"));
    assert.deepEqual(runOwnerOf("torch.rendezvous.a.b"), pytorch("a.b"));
    assert.deepEqual(runOwnerOf("torch.rendezvous.a.b.3/k"), pytorch("a.b"));
    assert.deepEqual(runOwnerOf("torch.rendezvous.a.3"), pytorch("a.3"));
    for (const key of [
      "torch.rendezvous.",
      "torch.rendezvous./x",
      "torch.rendezvous.job/x",
      "torch.rendezvous.job.01/x",
      "torch.rendezvous.job./x",
      "torch.rendezvous..1/x",
      "torch.rendezvousjob",
    ]) {
      assert.equal(runOwnerOf(key), undefined, key);
    }
  });

  it("agrees with the run list: a key naming a run (parseRdzvKey, parseTorchKey) belongs to it", () => {
    const segment = fc.constantFrom("a", "b", "r0", "r1", "store", "launcher", "open", "hb", "0", "x.1", "é");
    const key = fc
      .tuple(fc.constantFrom("rdzv/", "torch.rendezvous."), fc.array(segment, { minLength: 1, maxLength: 7 }))
      .map(([prefix, parts]) => prefix + parts.join("/"));
    fc.assert(
      fc.property(key, (k) => {
        const owner = runOwnerOf(k);
        const parsed = parseRdzvKey(k);
        if (parsed !== undefined) assert.deepEqual(owner, rdzv(parsed.runId));
        const torch = parseTorchKey(k);
        if (torch !== undefined) assert.deepEqual(owner, pytorch(torch));
        const listed = runListKey(k);
        if (owner !== undefined && listed !== undefined && listed.role !== "gone") {
          assert.equal(runListKeyOf(owner), k);
        }
        if (owner !== undefined) {
          assert.ok(
            k.startsWith(
              owner.layout === "rdzv" ? `rdzv/${owner.runId}/` : `torch.rendezvous.${owner.runId}`,
            ),
          );
        }
      }),
      { numRuns: 5000 },
    );
  });

  it("names each run's list key", () => {
    assert.equal(runListKeyOf(rdzv("a/b")), "rdzv/a/b/open");
    assert.equal(runListKeyOf(pytorch("a.b")), "torch.rendezvous.a.b");
  });
});
