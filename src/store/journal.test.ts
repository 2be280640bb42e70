/**
 * The journal of `rdzv serve --data-dir` on real files: every mutation kind survives a reopen, compaction
 * keeps the data and one generation of files, a bad last record is dropped with a warning, corruption
 * elsewhere is a clear error, the directory is locked; and a fast-check model test of random operations
 * with random compaction points against an engine that never restarts.
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import {
  appendFileSync,
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import fc from "fast-check";
import { ErrorCode } from "../errors.js";
import type { Logger } from "../log.js";
import { type Journal, type JournalOptions, openJournal } from "./journal.js";
import { encodeHeader, encodeMutation, HEADER_BYTES, JOURNAL_MAGIC_V1 } from "./journal-codec.js";
import { KvEngine } from "./kv-engine.js";
import { connectTCPStore } from "./tcp/client.js";
import { createTCPStoreServer } from "./tcp/server.js";

const roots: string[] = [];
after(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true });
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), "rdzv-journal-"));
  roots.push(dir);
  return dir;
}

const b = (s: string): Buffer => Buffer.from(s, "utf8");

/** Everything an engine holds, comparable with deepEqual. */
function contents(engine: KvEngine): { keys: [string, string][]; queues: [string, string[]][] } {
  const keys = [...engine.keys()]
    .sort()
    .map((k): [string, string] => [k, Buffer.from(engine.get(k)!).toString("hex")]);
  const queues = [...engine.queueEntries()]
    .map(([k, items]): [string, string[]] => [k, items.map((v) => Buffer.from(v).toString("hex"))])
    .sort((x, y) => (x[0] < y[0] ? -1 : 1));
  return { keys, queues };
}

function reopen(
  dir: string,
  options: Partial<JournalOptions> = {},
): { engine: KvEngine; journal: Journal; close: () => void } {
  const engine = new KvEngine();
  const journal = openJournal(engine, { dir, ...options });
  return { engine, journal, close: () => journal.close() };
}

function capture(): { logger: Logger; warnings: string[]; infos: string[] } {
  const warnings: string[] = [];
  const infos: string[] = [];
  const logger: Logger = {
    debug() {},
    info: (m, f) => infos.push(`${m} ${JSON.stringify(f)}`),
    warn: (m, f) => warnings.push(`${m} ${JSON.stringify(f)}`),
    error: (m, f) => warnings.push(`ERROR ${m} ${JSON.stringify(f)}`),
  };
  return { logger, warnings, infos };
}

/**
 * A child process that takes `dir`'s lock at epoch ms `at` (spinning until then, so that several start
 * together) and holds it until killed; `result` is "GOT" or the error's message.
 */
function lockInChild(dir: string, at: number): { child: ChildProcess; result: Promise<string> } {
  const lock = new URL("./journal-lock.js", import.meta.url).href;
  const script = `const { lockDataDir } = await import(${JSON.stringify(lock)});
    while (Date.now() < ${at}) {}
    try { lockDataDir(${JSON.stringify(dir)}); console.log("GOT"); } catch (e) { console.log(e.message); }
    setInterval(() => {}, 1000);`;
  const child = spawn(process.execPath, ["--input-type=module", "-e", script]);
  const result = new Promise<string>((resolve, reject) => {
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
      out += chunk;
      if (out.includes("\n")) resolve(out.trim());
    });
    child.on("exit", (code) => reject(new Error(`exited ${code} before it said: ${out}`)));
  });
  return { child, result };
}

/** Where each record of journal `bytes` starts. */
function recordStarts(bytes: Buffer): number[] {
  const starts: number[] = [];
  for (let at = HEADER_BYTES; at < bytes.length; at += 8 + bytes.readUInt32LE(at)) starts.push(at);
  return starts;
}

/** Applies one of every mutation kind. */
function mutateAll(engine: KvEngine): void {
  engine.set("a", b("1"));
  engine.add("counter", 41n);
  engine.add("counter", 1n);
  engine.append("log", b("x"));
  engine.append("log", b("yz"));
  engine.compareSet("cas", b(""), b("first"));
  engine.compareSet("cas", b("nope"), b("never"));
  engine.set("doomed", b("bye"));
  engine.delete("doomed");
  engine.set("bin\u00ff/ключ", Buffer.from([0, 1, 2, 255]));
  engine.queuePush("q", b("one"));
  engine.queuePush("q", b("two"));
  engine.queuePop("q");
  engine.set("empty", b(""));
  engine.multiSet(["m/1", "m/2", "a"], [b("x"), b("y"), b("2")]);
}

/** A closed data directory whose journal-0 holds `mutateAll`'s mutations: its path and what it restores. */
function writtenJournal(): { dir: string; path: string; before: ReturnType<typeof contents> } {
  const dir = tempDir();
  const first = reopen(dir);
  mutateAll(first.engine);
  const before = contents(first.engine);
  first.close();
  return { dir, path: join(dir, "journal-0"), before };
}

describe("journal", () => {
  it("replays every kind of mutation after a reopen", () => {
    const dir = tempDir();
    const first = reopen(dir);
    mutateAll(first.engine);
    const before = contents(first.engine);
    first.close();
    const second = reopen(dir);
    assert.deepEqual(contents(second.engine), before);
    assert.equal(Buffer.from(second.engine.get("counter")!).toString(), "42");
    second.close();
  });

  it("restores a client's multi-set all or nothing, wherever its journal record is cut", async () => {
    const dir = tempDir();
    const first = reopen(dir);
    const server = await createTCPStoreServer({ engine: first.engine, port: 0 });
    const keys = ["m/a", "m/b", "m/c", "m/d"];
    try {
      await using client = await connectTCPStore({ host: "127.0.0.1", port: server.port, timeoutMs: 10_000 });
      await client.set("before", "1");
      await client.multiSet(keys, ["va", "vb", "vc", "vd"]);
    } finally {
      await server.close();
      first.close();
    }
    const path = join(dir, "journal-0");
    const whole = readFileSync(path);
    // rdzv's client (as PyTorch's) sends key K as "/K".
    const start = HEADER_BYTES + encodeMutation({ op: "set", key: "/before", value: b("1") }).length;
    for (let cut = start; cut <= whole.length; cut++) {
      writeFileSync(path, whole.subarray(0, cut));
      const again = reopen(dir);
      const present = keys.filter((k) => again.engine.get(`/${k}`) !== undefined);
      assert.equal(Buffer.from(again.engine.get("/before")!).toString(), "1");
      again.close();
      assert.ok(
        present.length === 0 || present.length === keys.length,
        `cut at byte ${cut} of ${whole.length}: restored ${present.join(", ")}`,
      );
      assert.equal(present.length === keys.length, cut === whole.length, `cut at byte ${cut}`);
    }
  });

  it("opens a format-1 journal as it was and rewrites its magic to format 2 before appending", () => {
    const dir = tempDir();
    const path = join(dir, "journal-0");
    const records = [
      encodeMutation({ op: "set", key: "k", value: b("v") }),
      encodeMutation({ op: "append", key: "k", value: b("w") }),
      encodeMutation({ op: "push", key: "q", value: b("item") }),
    ];
    writeFileSync(path, Buffer.concat([encodeHeader(JOURNAL_MAGIC_V1, 0), ...records]));
    const first = reopen(dir);
    assert.equal(Buffer.from(first.engine.get("k")!).toString(), "vw");
    assert.equal(first.engine.queueLen("q"), 1);
    assert.equal(readFileSync(path).toString("latin1", 0, 8), "RDZVJRN2");
    first.engine.multiSet(["x", "y"], [b("1"), b("2")]);
    first.close();
    const second = reopen(dir);
    assert.deepEqual(
      ["k", "x", "y"].map((k) => Buffer.from(second.engine.get(k)!).toString()),
      ["vw", "1", "2"],
    );
    second.close();
    writeFileSync(path, Buffer.concat([Buffer.from("RDZVJRN3", "latin1"), readFileSync(path).subarray(8)]));
    assert.throws(() => reopen(dir), /is an rdzv journal of a newer format \(RDZVJRN3\)/);
  });

  it("compacts into a snapshot, keeps the data and one generation of files", () => {
    const dir = tempDir();
    const first = reopen(dir, { compactBytes: 2048 });
    for (let i = 0; i < 500; i++) first.engine.set(`k${i % 50}`, b(`value ${i}`));
    return new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      mutateAll(first.engine);
      const before = contents(first.engine);
      first.close();
      const files = readdirSync(dir).sort();
      assert.equal(files.length, 2, `files: ${files}`);
      assert.match(files[0]!, /^journal-[1-9]\d*$/);
      assert.match(files[1]!, /^snapshot-[1-9]\d*$/);
      const second = reopen(dir);
      assert.deepEqual(contents(second.engine), before);
      second.close();
    });
  });

  it("creates the data directory private (700) and its files 600, whatever the umask allows", async () => {
    const dir = join(tempDir(), "new", "data");
    const umask = process.umask(0o022);
    try {
      const j = reopen(dir, { compactBytes: 1024 });
      for (let i = 0; i < 200; i++) j.engine.set(`k${i % 20}`, b(`value ${i}`));
      await new Promise<void>((resolve) => setImmediate(resolve));
      // Held while open: the journal, the snapshot compaction wrote, and the lock's pid file.
      const mode = (path: string): string => (statSync(path).mode & 0o777).toString(8);
      assert.equal(mode(dir), "700");
      assert.equal(mode(join(dir, "..")), "700");
      const files = readdirSync(dir).sort();
      assert.ok(files.some((f) => f.startsWith("snapshot-")) && files.includes("LOCK"), `files: ${files}`);
      for (const f of files) assert.equal(mode(join(dir, f)), "600", f);
      j.close();
    } finally {
      process.umask(umask);
    }
  });

  it("warns when an existing data directory is open to other users, and not when it is private", () => {
    const dir = tempDir(); // mkdtemp makes it 700
    const quiet = capture();
    reopen(dir, { logger: quiet.logger }).close();
    assert.deepEqual(quiet.warnings, []);
    chmodSync(dir, 0o755);
    const loud = capture();
    reopen(dir, { logger: loud.logger }).close();
    assert.equal(loud.warnings.length, 1, loud.warnings.join("\n"));
    assert.match(loud.warnings[0]!, /is open to other users \(mode 755\).*chmod 700/);
  });

  it("drops a torn last record with a warning, and appends after it", () => {
    const { dir, path, before } = writtenJournal();
    const size = statSync(path).size;
    appendFileSync(path, encodeMutation({ op: "set", key: "torn", value: b("lost") }).subarray(0, 11));
    const { logger, warnings } = capture();
    const second = reopen(dir, { logger });
    assert.deepEqual(contents(second.engine), before);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /torn last record .*"offset":\d+,"bytes":11/);
    assert.deepEqual(second.journal.stats.droppedTail, {
      kind: "cut short",
      offset: size,
      bytes: 11,
      records: 0,
    });
    assert.equal(statSync(path).size, size, "the torn bytes were cut off");
    assert.deepEqual(readdirSync(dir).sort(), ["LOCK", "journal-0"], "nothing saved for a write cut short");
    second.engine.set("after", b("ok"));
    second.close();
    const third = reopen(dir);
    assert.equal(Buffer.from(third.engine.get("after")!).toString(), "ok");
    third.close();
  });

  it("drops a damaged (full-length, bad checksum) last record, saving its bytes next to the journal first", () => {
    const flipped = encodeMutation({ op: "set", key: "damaged", value: b("garbled") });
    flipped[flipped.length - 1] = flipped[flipped.length - 1]! ^ 0x01;
    // A full-length record with a bad checksum; zeros a crash left (a record of length 0 is not one).
    for (const tail of [flipped, Buffer.alloc(64)]) {
      const { dir, path, before } = writtenJournal();
      const size = statSync(path).size;
      appendFileSync(path, tail);
      const { logger, warnings } = capture();
      const second = reopen(dir, { logger });
      assert.deepEqual(contents(second.engine), before);
      const saved = join(dir, `journal-0.dropped-${size}`);
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!, /damaged last record/);
      assert.doesNotMatch(warnings[0]!, /cut short/);
      assert.ok(warnings[0]!.includes(JSON.stringify(saved)), warnings[0]);
      assert.deepEqual(second.journal.stats.droppedTail, {
        kind: "damaged",
        offset: size,
        bytes: tail.length,
        records: 0,
        savedTo: saved,
      });
      assert.deepEqual(readFileSync(saved), Buffer.from(tail), "the dropped bytes, as they were");
      assert.equal(statSync(path).size, size, "the journal was truncated after them");
      second.engine.set("after", b("ok"));
      second.close();
      const third = reopen(dir, { logger });
      assert.equal(Buffer.from(third.engine.get("after")!).toString(), "ok");
      assert.equal(warnings.length, 1, "nothing more to drop");
      third.close();
      assert.ok(readdirSync(dir).includes(`journal-0.dropped-${size}`), "the saved bytes are kept");
    }
  });

  it("drops a last record cut short at any byte, however many record-shaped bytes its value holds", () => {
    const { dir, path, before } = writtenJournal();
    const intact = readFileSync(path);
    // A value that holds encoded records (a client may store anything), even a whole journal's.
    const shaped = Buffer.concat([
      encodeMutation({ op: "set", key: "inner", value: b("looks intact") }),
      encodeMutation({
        op: "batch",
        mutations: [
          { op: "delete", key: "x" },
          { op: "pop", key: "q" },
        ],
      }),
      intact,
      encodeMutation({ op: "append", key: "inner", value: b("!") }),
    ]);
    const record = encodeMutation({ op: "set", key: "carrier", value: shaped });
    for (let cut = 1; cut < record.length; cut++) {
      writeFileSync(path, Buffer.concat([intact, record.subarray(0, cut)]));
      const { logger, warnings } = capture();
      const again = reopen(dir, { logger });
      assert.deepEqual(contents(again.engine), before, `cut at byte ${cut} of the last record`);
      assert.equal(again.journal.stats.droppedTail?.kind, "cut short", `cut at byte ${cut}`);
      assert.equal(warnings.length, 1, warnings.join("\n"));
      again.close();
      assert.equal(statSync(path).size, intact.length);
    }
  });

  it("drops a full-length last record damaged inside its record-shaped value (a crash's garbage)", () => {
    const { dir, path, before } = writtenJournal();
    const intact = readFileSync(path);
    const shaped = Buffer.concat([
      intact.subarray(HEADER_BYTES),
      Buffer.alloc(512, 7),
      intact.subarray(HEADER_BYTES),
    ]);
    const record = encodeMutation({ op: "set", key: "carrier", value: shaped });
    // A sector of zeros (as a power loss can leave) inside the value; the records around it read intact.
    record.fill(0, 40 + intact.length, 40 + intact.length + 512);
    writeFileSync(path, Buffer.concat([intact, record]));
    const again = reopen(dir);
    assert.deepEqual(contents(again.engine), before);
    assert.equal(again.journal.stats.droppedTail?.kind, "damaged");
    again.close();
  });

  it("keeps the newest 5 dropped-bytes files, removing older ones at open and naming them", () => {
    const dir = tempDir();
    reopen(dir).close();
    const earlier = [
      "journal-0.dropped-16",
      "journal-0.dropped-16.2",
      "journal-3.dropped-900",
      "journal-3.dropped-40",
      "journal-7.dropped-16",
      "journal-7.dropped-2000",
      "journal-0.dropped-77",
    ];
    const now = Date.now() / 1000;
    earlier.forEach((name, i) => {
      writeFileSync(join(dir, name), `evidence ${i}`);
      utimesSync(join(dir, name), now - 3600 + i * 60, now - 3600 + i * 60); // oldest first
    });
    appendFileSync(join(dir, "journal-0"), Buffer.alloc(32)); // a damaged tail: saved, the newest
    const { logger, infos } = capture();
    const opened = reopen(dir, { logger });
    opened.close();
    // At offset 16, after journal-0.dropped-16 and .2.
    const saved = "journal-0.dropped-16.3";
    assert.equal(opened.journal.stats.droppedTail?.savedTo, join(dir, saved));
    const dropped = (): string[] =>
      readdirSync(dir)
        .filter((f) => f.includes(".dropped-"))
        .sort();
    const removed = earlier.slice(0, 3);
    assert.deepEqual(dropped(), [...earlier.slice(3), saved].sort());
    assert.equal(infos.length, 1, infos.join("\n"));
    assert.match(infos[0]!, /removed 3 old dropped-bytes files, keeping the newest 5/);
    for (const name of removed) assert.ok(infos[0]!.includes(JSON.stringify(join(dir, name))), infos[0]);
    reopen(dir, { logger, keepDroppedFiles: 1 }).close();
    assert.deepEqual(dropped(), [saved]);
    assert.throws(() => reopen(dir, { keepDroppedFiles: 0 }), /keepDroppedFiles must be an integer >= 1/);
  });

  it("never removes the dropped-bytes file it just saved, whatever the other files' times", () => {
    const dir = tempDir();
    reopen(dir).close();
    // Older evidence stamped in the future: a clock set back after the crash, or files copied in.
    const future = Date.now() / 1000 + 86_400;
    for (let i = 0; i < 5; i++) {
      writeFileSync(join(dir, `journal-0.dropped-${100 + i}`), "older evidence");
      utimesSync(join(dir, `journal-0.dropped-${100 + i}`), future + i, future + i);
    }
    appendFileSync(join(dir, "journal-0"), Buffer.alloc(32)); // a damaged tail, saved at this open
    const opened = reopen(dir);
    opened.close();
    const saved = opened.journal.stats.droppedTail?.savedTo;
    assert.equal(saved, join(dir, "journal-0.dropped-16"));
    assert.deepEqual(readFileSync(saved), Buffer.alloc(32), "the bytes it says it saved are there");
    assert.equal(existsSync(join(dir, "journal-0.dropped-100")), false, "the oldest other file goes");
    appendFileSync(join(dir, "journal-0"), Buffer.alloc(32));
    const one = reopen(dir, { keepDroppedFiles: 1 });
    one.close();
    assert.deepEqual(
      readdirSync(dir).filter((f) => f.includes(".dropped-")),
      ["journal-0.dropped-16.2"],
      "keepDroppedFiles 1 keeps the file this open saved",
    );
  });

  it("leaves alone, and starts despite, entries named like dropped-bytes files that rdzv did not write", () => {
    const dir = tempDir();
    reopen(dir).close();
    const target = join(tempDir(), "not-ours");
    writeFileSync(target, "someone else's file");
    symlinkSync(target, join(dir, "journal-0.dropped-1")); // a link to a file elsewhere
    symlinkSync(join(dir, "gone"), join(dir, "journal-0.dropped-2")); // a link to nothing
    mkdirSync(join(dir, "journal-0.dropped-3"));
    const { logger, warnings } = capture();
    reopen(dir, { logger, keepDroppedFiles: 1 }).close();
    assert.deepEqual(
      readdirSync(dir)
        .filter((f) => f.includes(".dropped-"))
        .sort(),
      ["journal-0.dropped-1", "journal-0.dropped-2", "journal-0.dropped-3"],
    );
    assert.equal(readFileSync(target, "utf8"), "someone else's file");
    assert.deepEqual(warnings, []);
  });

  it("refuses a journal corrupted before its end, naming the file and offset", () => {
    const { dir, path } = writtenJournal();
    const bytes = readFileSync(path);
    bytes[HEADER_BYTES + 12] = bytes[HEADER_BYTES + 12]! ^ 0xff; // inside the first record's payload
    writeFileSync(path, bytes);
    assert.throws(
      () => reopen(dir),
      (err: { code: string; message: string; repairable: boolean }) =>
        err.code === ErrorCode.State &&
        err.repairable &&
        err.message.includes(path) &&
        err.message.includes(`byte ${HEADER_BYTES}`),
    );
    writeFileSync(path, Buffer.concat([Buffer.from("NOTAJRNL"), bytes.subarray(8)]));
    assert.throws(
      () => reopen(dir),
      (err: { message: string; repairable: boolean }) => /bad header/.test(err.message) && !err.repairable,
    );
  });

  it("refuses damage before the end that a torn tail could hide: a length field, a header, a zeroed sector", () => {
    const { dir, path } = writtenJournal();
    const intact = readFileSync(path);
    const starts = recordStarts(intact);
    const third = starts[2]!;
    const last = starts[starts.length - 1]!;
    const damage: [string, (buf: Buffer) => void, RegExp][] = [
      [
        "a length field past the end of the file",
        (buf) => buf.writeUInt32LE(0x7fff_0000, third),
        /its checksum matches its first \d+ bytes, not the 2147418112 its length field says/,
      ],
      [
        "the last record's length field past the end of the file",
        (buf) => buf.writeUInt32LE(buf.readUInt32LE(last) + 1000, last),
        /its checksum matches its \d+ bytes up to the end of the file/,
      ],
      [
        "a header overwritten with other bytes",
        (buf) => buf.fill(0xab, third, third + 16),
        /not shaped like a record/,
      ],
      ["a zeroed stretch", (buf) => buf.fill(0, third, third + 40), /intact records follow/],
      ["a payload byte", (buf) => (buf[third + 9] = buf[third + 9]! ^ 0x40), /intact records follow/],
    ];
    for (const [what, damageIt, says] of damage) {
      const bad = Buffer.from(intact);
      damageIt(bad);
      writeFileSync(path, bad);
      assert.throws(
        () => reopen(dir),
        (err: { code: string; message: string; repairable: boolean }) =>
          err.code === ErrorCode.State &&
          err.repairable &&
          err.message.startsWith(
            `${path} is corrupt: bad record at byte ${what.startsWith("the last") ? last : third}`,
          ) &&
          says.test(err.message),
        what,
      );
      assert.deepEqual(readFileSync(path), bad, `${what}: the journal is left as it was`);
    }
  });

  it("repairs a corrupt journal when asked: keeps the records before the bad one, saves the rest", () => {
    const dir = tempDir();
    const first = reopen(dir);
    first.engine.set("kept", b("1"));
    first.engine.multiSet(["kept/a", "kept/b"], [b("a"), b("b")]);
    first.engine.set("lost", b("2"));
    first.engine.set("after", b("3"));
    first.close();
    const path = join(dir, "journal-0");
    const bytes = readFileSync(path);
    const bad = recordStarts(bytes)[2]!;
    bytes[bad + 9] = bytes[bad + 9]! ^ 0x40;
    writeFileSync(path, bytes);
    const { logger, warnings } = capture();
    const repaired = reopen(dir, { logger, repair: true });
    assert.deepEqual([...repaired.engine.keys()].sort(), ["kept", "kept/a", "kept/b"]);
    const saved = join(dir, `journal-0.dropped-${bad}`);
    const tail = repaired.journal.stats.droppedTail!;
    assert.equal(tail.kind, "corrupt");
    assert.deepEqual(
      { offset: tail.offset, bytes: tail.bytes, records: tail.records, savedTo: tail.savedTo },
      { offset: bad, bytes: bytes.length - bad, records: 1, savedTo: saved },
    );
    assert.match(tail.reason!, /is corrupt: bad record at byte \d+ of \d+: intact records follow/);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0]!, /repairing a corrupt journal/);
    assert.match(warnings[0]!, /"recordsKept":2,"intactRecordsDropped":1/);
    assert.deepEqual(readFileSync(saved), bytes.subarray(bad));
    assert.equal(statSync(path).size, bad);
    repaired.engine.set("new", b("4"));
    repaired.close();
    const again = reopen(dir, { logger });
    assert.deepEqual([...again.engine.keys()].sort(), ["kept", "kept/a", "kept/b", "new"]);
    assert.equal(warnings.length, 1, "nothing more to drop");
    again.close();
  });

  it("refuses an empty or headless journal or snapshot, naming the file (they are always written with a header)", () => {
    const dir = tempDir();
    const first = reopen(dir, { compactBytes: 256 });
    for (let i = 0; i < 100; i++) first.engine.set(`k${i}`, b("v"));
    return new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      first.engine.set("after", b("compaction"));
      first.close();
      const files = readdirSync(dir);
      const journal = join(dir, files.find((f) => f.startsWith("journal-"))!);
      const snapshot = join(dir, files.find((f) => f.startsWith("snapshot-"))!);
      for (const path of [journal, snapshot]) {
        const intact = readFileSync(path);
        for (const [bytes, says] of [
          [Buffer.alloc(0), "is empty (0 bytes)"],
          [intact.subarray(0, 5), "is 5 bytes, shorter than its header"],
        ] as const) {
          writeFileSync(path, bytes);
          assert.throws(
            () => reopen(dir),
            (err: { code: string; message: string }) =>
              err.code === ErrorCode.State && err.message.startsWith(`${path} ${says}`),
          );
          assert.equal(statSync(path).size, bytes.length, "the file is left as it was");
        }
        writeFileSync(path, intact);
      }
      const again = reopen(dir);
      assert.equal(Buffer.from(again.engine.get("after")!).toString(), "compaction");
      again.close();
    });
  });

  it("refuses a damaged snapshot", () => {
    const dir = tempDir();
    const first = reopen(dir, { compactBytes: 256 });
    for (let i = 0; i < 100; i++) first.engine.set(`k${i}`, b("v"));
    return new Promise<void>((resolve) => setImmediate(resolve)).then(() => {
      first.close();
      const name = readdirSync(dir).find((f) => f.startsWith("snapshot-"))!;
      const path = join(dir, name);
      writeFileSync(path, readFileSync(path).subarray(0, statSync(path).size - 3));
      assert.throws(
        () => reopen(dir),
        (err: { code: string }) => err.code === ErrorCode.State,
      );
    });
  });

  it("locks the directory while open; a lock of a dead process is taken over", () => {
    const dir = tempDir();
    const first = reopen(dir);
    assert.throws(() => reopen(dir), /in use by this process/);
    first.close();
    for (const stale of [999999999, process.pid]) {
      // A pid that does not run; this process's own pid, as a container's pid 1 after a restart.
      writeFileSync(join(dir, "LOCK"), `${stale}\n`);
      const again = reopen(dir);
      again.close();
    }
  });

  it("names the data directory or the file, and the problem, when the directory cannot be used", () => {
    const root = tempDir();
    const file = join(root, "afile");
    writeFileSync(file, "");
    const refused = (dir: string, message: RegExp): void => {
      assert.throws(
        () => reopen(dir),
        (err: { code: string; message: string }) => err.code === ErrorCode.Store && message.test(err.message),
      );
    };
    refused(file, new RegExp(`^data directory ${file} is a file, not a directory$`));
    refused(
      join(file, "sub"),
      /^cannot create data directory .*afile\/sub: a part of the path is a file, not a directory \(ENOTDIR\)$/,
    );
    for (const name of ["journal-0", "snapshot-1"]) {
      const dir = join(root, name.replace("-", ""));
      mkdirSync(join(dir, name), { recursive: true });
      refused(
        dir,
        new RegExp(`^cannot read ${join(dir, name)}: it is a directory, not a file \\(EISDIR\\)$`),
      );
      assert.deepEqual(readdirSync(dir), [name], "the lock was released");
    }
    const locked = join(root, "locked");
    mkdirSync(join(locked, "LOCK"), { recursive: true });
    refused(locked, /LOCK is a directory, not rdzv's lock file: remove it$/);
  });

  it("leaves no empty LOCK when it cannot write its pid there (a write past RLIMIT_FSIZE, as a full disk)", () => {
    const dir = tempDir();
    const journal = new URL("./journal.js", import.meta.url).href;
    // With SIGXFSZ handled, a write past the limit fails with EFBIG instead of killing the process.
    const script = `process.on("SIGXFSZ", () => {});
      const { openJournal } = await import(${JSON.stringify(journal)});
      const { KvEngine } = await import(${JSON.stringify(new URL("./kv-engine.js", import.meta.url).href)});
      try { openJournal(new KvEngine(), { dir: ${JSON.stringify(dir)} }); } catch (err) { console.log(err.message); }`;
    const child = spawnSync(
      "bash",
      ["-c", 'ulimit -f 0 && exec "$0" --input-type=module -e "$1"', process.execPath, script],
      {
        encoding: "utf8",
      },
    );
    assert.equal(child.status, 0, child.stderr);
    assert.match(child.stdout, new RegExp(`^cannot write the lock file ${join(dir, "LOCK")}: .*EFBIG`));
    assert.deepEqual(readdirSync(dir), []);
    reopen(dir).close();
  });

  it("gives a directory to exactly one of several processes starting together on a stale LOCK", async () => {
    for (let trial = 0; trial < 8; trial++) {
      const dir = tempDir();
      writeFileSync(join(dir, "LOCK"), "999999999\n"); // left by a process killed long ago
      const at = Date.now() + 400;
      const children = [0, 1, 2].map(() => lockInChild(dir, at));
      try {
        const results = await Promise.all(children.map((c) => c.result));
        assert.equal(results.filter((r) => r === "GOT").length, 1, results.join(" | "));
        const holder = children[results.indexOf("GOT")]!.child.pid;
        for (const r of results.filter((x) => x !== "GOT")) {
          assert.match(r, new RegExp(`in use by (process ${holder}|another process)`));
        }
      } finally {
        for (const c of children) c.child.kill("SIGKILL");
      }
    }
  });

  it("is free once its holder is killed, and a live process that merely has the pid in LOCK blocks nothing", {
    skip: process.platform !== "linux" && "the pid-file lock elsewhere cannot tell a reused pid",
  }, async () => {
    const dir = tempDir();
    const holder = lockInChild(dir, 0);
    assert.equal(await holder.result, "GOT");
    assert.throws(() => reopen(dir), new RegExp(`in use by process ${holder.child.pid} \\(see .*LOCK\\)`));
    holder.child.kill("SIGKILL");
    await once(holder.child, "exit");
    reopen(dir).close();
    // A stale LOCK whose pid now belongs to an unrelated live process (here: this one's parent).
    writeFileSync(join(dir, "LOCK"), `${process.ppid}\n`);
    const again = reopen(dir);
    assert.equal(readFileSync(join(dir, "LOCK"), "utf8"), `${process.pid}\n`);
    again.close();
  });

  it("validates its options", () => {
    const dir = tempDir();
    assert.throws(
      () => reopen(dir, { fsync: "sometimes" as never }),
      /fsync must be one of always, interval, never/,
    );
    assert.throws(() => reopen(dir, { fsyncIntervalMs: 0 }), /fsyncIntervalMs/);
    const engine = new KvEngine();
    engine.set("x", b("1"));
    assert.throws(() => openJournal(engine, { dir }), /empty engine/);
  });

  it("keeps what a never-restarted engine holds, over random operations, compactions and restarts (fast-check)", () => {
    const key = fc.constantFrom("a", "b", "c", "q");
    const value = fc.uint8Array({ maxLength: 40 });
    const op = fc.oneof(
      fc.record({ op: fc.constant("set"), key, value }),
      fc.record({ op: fc.constant("multiSet"), keys: fc.array(key, { maxLength: 4 }), value }),
      fc.record({ op: fc.constant("add"), key: fc.constant("n"), delta: fc.bigInt({ min: -5n, max: 5n }) }),
      fc.record({ op: fc.constant("append"), key, value }),
      fc.record({ op: fc.constant("cas"), key, value }),
      fc.record({ op: fc.constant("delete"), key }),
      fc.record({ op: fc.constant("push"), key, value }),
      fc.record({ op: fc.constant("pop"), key }),
      fc.record({ op: fc.constant("restart") }),
      fc.record({ op: fc.constant("compact") }),
    );
    fc.assert(
      fc.property(
        fc.array(op, { maxLength: 80 }),
        fc.integer({ min: 64, max: 4096 }),
        (ops, compactBytes) => {
          const dir = tempDir();
          const model = new KvEngine();
          let live = reopen(dir, { compactBytes, fsync: "never" });
          for (const o of ops) {
            for (const engine of [model, live.engine]) {
              if (o.op === "set") engine.set(o.key, o.value);
              else if (o.op === "multiSet")
                engine.multiSet(
                  o.keys,
                  o.keys.map((_, i) => o.value.subarray(i)),
                );
              else if (o.op === "add") engine.add("n", o.delta);
              else if (o.op === "append") engine.append(o.key, o.value);
              else if (o.op === "cas")
                engine.compareSet(o.key, engine.get(o.key) ?? new Uint8Array(), o.value);
              else if (o.op === "delete") engine.delete(o.key);
              else if (o.op === "push") engine.queuePush(o.key, o.value);
              else if (o.op === "pop") engine.queuePop(o.key);
            }
            if (o.op === "compact") live.journal.compact();
            if (o.op === "restart") {
              live.close();
              live = reopen(dir, { compactBytes, fsync: "never" });
            }
          }
          assert.deepEqual(contents(live.engine), contents(model));
          live.close();
          rmSync(dir, { recursive: true, force: true });
        },
      ),
      { numRuns: 60 },
    );
  });
});
