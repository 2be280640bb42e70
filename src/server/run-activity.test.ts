/** The idle clocks of runs (run-activity.ts), fed key changes by hand, on a clock the test moves. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { userKeyOf } from "./key-reader.js";
import { MAX_ENDED_RUNS, RunActivity } from "./run-activity.js";

function clocked(userKey?: (key: string) => string | undefined): {
  activity: RunActivity;
  advance(ms: number): void;
} {
  let now = 1000;
  return {
    activity: new RunActivity(() => now, userKey),
    advance: (ms) => {
      now += ms;
    },
  };
}

/** Feeds user keys as their own engine keys. */
function write(activity: RunActivity, ...keys: string[]): void {
  for (const k of keys) activity.note(k, "written");
}

const ids = (activity: RunActivity, ttlMs: number): string[] =>
  activity.idleRuns(ttlMs).map((r) => `${r.layout}:${r.runId}`);

describe("RunActivity", () => {
  it("a run is idle once none of its keys was written for longer than the TTL", () => {
    const { activity, advance } = clocked();
    write(activity, "rdzv/a/open", "rdzv/a/r0/hb/0");
    assert.deepEqual(ids(activity, 100), []);
    advance(100);
    assert.deepEqual(ids(activity, 100), []);
    advance(1);
    assert.deepEqual(ids(activity, 100), ["rdzv:a"]);
    // A keep-alive (an overwrite) restarts the clock: the pass that sees it counts it as written then.
    write(activity, "rdzv/a/r0/hb/0");
    assert.equal(activity.idleMs(activity.group({ layout: "rdzv", runId: "a" })!), 0);
    advance(30);
    assert.deepEqual(ids(activity, 100), []);
    advance(100);
    assert.deepEqual(ids(activity, 100), []);
    assert.equal(activity.idleMs(activity.group({ layout: "rdzv", runId: "a" })!), 100);
    advance(1);
    assert.deepEqual(ids(activity, 100), ["rdzv:a"]);
  });

  it("counts a write from the first pass after it: late by a pass interval at most, never early", () => {
    const { activity, advance } = clocked();
    write(activity, "rdzv/a/open");
    advance(50);
    write(activity, "rdzv/a/r0/hb/0");
    advance(50);
    // The write was 50 ms ago; it counts from this pass.
    assert.deepEqual(ids(activity, 10), []);
    advance(11);
    assert.deepEqual(ids(activity, 10), ["rdzv:a"]);
  });

  it("any key of the run moves its clock, a round store's and the launcher's too; other keys do not", () => {
    const { activity, advance } = clocked();
    write(activity, "rdzv/a/open", "torch.rendezvous.t");
    for (const key of ["rdzv/a/r3/store/x", "rdzv/a/launcher/restarts", "rdzv/a/r3/store/x"]) {
      advance(50);
      write(activity, key, "rdzv/b/r0/hb/0", "user/a", "rdzv/a/notes", "rdzv/a/b/open");
      advance(50);
      assert.deepEqual(ids(activity, 60), ["pytorch:t"], key);
    }
    // Run "a/b"'s keys, and keys under "rdzv/a/" that are no run's, do not keep run "a".
    write(
      activity,
      "torch.rendezvous.t.0/MASTER_PORT",
      "rdzv/a/b/r0/hb/0",
      "rdzv/a/notes",
      "rdzv/a/r01/outcome",
    );
    advance(61);
    assert.deepEqual(ids(activity, 60), ["rdzv:a"]);
    advance(61);
    assert.deepEqual(ids(activity, 60), ["rdzv:a", "pytorch:t", "rdzv:a/b"]);
  });

  it("deletions do not move the clock; a group holds the keys of its run and is a run while it holds the list key", () => {
    const { activity, advance } = clocked();
    write(activity, "rdzv/a/r0/hb/0", "rdzv/a/r0/tickets");
    advance(100);
    // Keys without `open`: no run (nothing the run list shows), so never idle.
    assert.equal(activity.runCount, 0);
    assert.deepEqual(ids(activity, 10), []);
    write(activity, "rdzv/a/open");
    assert.equal(activity.runCount, 1);
    const group = activity.group({ layout: "rdzv", runId: "a" })!;
    assert.deepEqual([...group.keys].sort(), ["rdzv/a/open", "rdzv/a/r0/hb/0", "rdzv/a/r0/tickets"]);
    assert.equal(group.listKey, "rdzv/a/open");
    // Its clock starts when it became a run.
    assert.equal(activity.idleMs(group), 0);
    advance(100);
    activity.note("rdzv/a/r0/tickets", "deleted");
    activity.note("rdzv/a/r0/tickets", "deleted");
    assert.deepEqual(ids(activity, 99), ["rdzv:a"]);
    activity.note("rdzv/a/open", "deleted");
    assert.equal(group.listKey, undefined);
    assert.equal(activity.runCount, 0);
    // A run no more, with a key left: a remnant, on the run's clock.
    assert.equal(group.remnant, true);
    assert.equal(activity.remnantCount, 1);
    assert.deepEqual(ids(activity, 99), ["rdzv:a"]);
    activity.note("rdzv/a/r0/hb/0", "deleted");
    assert.equal(activity.remnantCount, 0);
    assert.equal(activity.group({ layout: "rdzv", runId: "a" }), undefined);
    assert.equal(activity.groupCount, 0);
    // Back again: a new group, its clock from now.
    write(activity, "rdzv/a/open");
    assert.notEqual(activity.group({ layout: "rdzv", runId: "a" }), group);
    assert.deepEqual(ids(activity, 0), []);
  });

  it("keys that come back to an ended run make a remnant, aged like a run until the run id is a run again", () => {
    const { activity, advance } = clocked();
    write(activity, "rdzv/a/open", "rdzv/a/r0/hb/0", "torch.rendezvous.t", "torch.rendezvous.t.0/x");
    for (const k of ["rdzv/a/r0/hb/0", "rdzv/a/open", "torch.rendezvous.t.0/x", "torch.rendezvous.t"]) {
      activity.note(k, "deleted");
    }
    assert.equal(activity.groupCount, 0);
    // A stalled agent resumes: its keep-alive (and a torchrun agent's round key) come back, no list key.
    write(activity, "rdzv/a/r0/hb/0", "torch.rendezvous.t.0/x");
    // Keys of a run id that never was a run here are no remnant (a run in the making, or look-alikes).
    write(activity, "rdzv/b/r0/hb/0", "torch.rendezvous.u.0/x");
    assert.equal(activity.remnantCount, 2);
    const remnant = activity.group({ layout: "rdzv", runId: "a" })!;
    assert.equal(remnant.remnant, true);
    assert.equal(remnant.listKey, undefined);
    assert.equal(activity.group({ layout: "rdzv", runId: "b" })?.remnant, false);
    advance(50);
    write(activity, "torch.rendezvous.t.0/x");
    assert.deepEqual(ids(activity, 10), ["rdzv:a"]);
    advance(51);
    assert.deepEqual(ids(activity, 50), ["rdzv:a", "pytorch:t"]);
    // The run starts again under that id: a run, its clock from now, no remnant.
    write(activity, "rdzv/a/open");
    assert.equal(remnant.remnant, false);
    assert.equal(activity.remnantCount, 1);
    assert.deepEqual(ids(activity, 50), ["pytorch:t"]);
    // Once that run is deleted too, the id is an ended run again.
    activity.note("rdzv/a/open", "deleted");
    activity.note("rdzv/a/r0/hb/0", "deleted");
    write(activity, "rdzv/a/r1/hb/0");
    assert.equal(activity.group({ layout: "rdzv", runId: "a" })?.remnant, true);
  });

  it("remembers at most MAX_ENDED_RUNS ended runs, forgetting the oldest", () => {
    const { activity } = clocked();
    for (let i = 0; i <= MAX_ENDED_RUNS; i++) {
      write(activity, `torch.rendezvous.r${i}`);
      activity.note(`torch.rendezvous.r${i}`, "deleted");
    }
    write(activity, "torch.rendezvous.r0.0/x", "torch.rendezvous.r1.0/x");
    assert.equal(activity.group({ layout: "pytorch", runId: "r0" })?.remnant, false, "forgotten");
    assert.equal(activity.group({ layout: "pytorch", runId: "r1" })?.remnant, true);
  });

  it("keeps the engine's key names apart from the user keys that place them", () => {
    const { activity, advance } = clocked((k) => userKeyOf(k, "/", true));
    for (const key of ["/rdzv/\xc3\xa9/open", "/user", "rdzv/x/open", "/rdzv/\xff/open"]) {
      activity.note(key, "written");
    }
    advance(5);
    const [run, ...more] = activity.idleRuns(1);
    assert.equal(more.length, 0);
    assert.equal(run?.runId, "é");
    assert.deepEqual([...run!.keys], ["/rdzv/\xc3\xa9/open"]);
    assert.equal(run?.listKey, "/rdzv/\xc3\xa9/open");
    assert.equal(activity.groupCount, 1);
  });

  it("keys found at the start are held, not written: their runs' clocks start then", () => {
    const { activity, advance } = clocked();
    for (const key of ["rdzv/a/r0/hb/0", "rdzv/a/open", "torch.rendezvous.t.0/x", "torch.rendezvous.t"]) {
      activity.note(key, "held");
    }
    advance(11);
    assert.deepEqual(ids(activity, 10), ["rdzv:a", "pytorch:t"]);
    activity.note("rdzv/a/r0/hb/0", "held");
    assert.deepEqual(ids(activity, 10), ["rdzv:a", "pytorch:t"]);
  });

  it("lists the longest idle first", () => {
    const { activity, advance } = clocked();
    write(activity, "rdzv/b/open");
    advance(10);
    write(activity, "rdzv/a/open");
    advance(10);
    write(activity, "torch.rendezvous.c");
    advance(100);
    assert.deepEqual(ids(activity, 50), ["rdzv:b", "rdzv:a", "pytorch:c"]);
  });
});
