import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { errorFilePath } from "./env.js";
import { MAX_ERROR_FILE_BYTES } from "./error-file.js";
import { createErrorFileDir, observeFailures, readErrorFile, writeErrorFile } from "./error-file-dir.js";
import type { WorkerExit } from "./policy.js";

const parent = mkdtempSync(join(tmpdir(), "rdzv-error-file-dir-test-"));
after(() => rmSync(parent, { recursive: true, force: true }));

const RECORD = JSON.stringify({
  message: { message: "ValueError: x", extraInfo: { py_callstack: "tb\n", timestamp: "1700000000" } },
});

describe("ErrorFileDir", () => {
  it("is a private folder named after the run; each attempt starts empty, with a folder per worker", () => {
    const dir = createErrorFileDir("job/1 ü", parent);
    assert.match(dir.path, /\/rdzv-job_1__-[A-Za-z0-9]{6}$/);
    assert.equal(statSync(dir.path).mode & 0o777, 0o700);
    const attempt = dir.prepareAttempt(0, 2);
    assert.equal(attempt, join(dir.path, "attempt_0"));
    assert.equal(statSync(attempt).mode & 0o777, 0o700);
    writeFileSync(errorFilePath(attempt, 1), RECORD);
    writeFileSync(join(attempt, "1", "left-over"), "x");
    assert.equal(dir.prepareAttempt(0, 2), attempt);
    assert.equal(existsSync(errorFilePath(attempt, 1)), false, "a stale error file was kept");
    assert.equal(existsSync(join(attempt, "1", "left-over")), false);
    assert.equal(statSync(join(attempt, "1")).isDirectory(), true);
    dir.remove();
    dir.remove();
    assert.equal(existsSync(dir.path), false);
  });
});

describe("ErrorFileDir.removeExcept", () => {
  it("keeps only the named error files (regular, at most 1 MiB) and the folders holding them", () => {
    const dir = createErrorFileDir("keep", parent);
    const early = dir.prepareAttempt(0, 1);
    writeFileSync(errorFilePath(early, 0), RECORD);
    const last = dir.prepareAttempt(1, 4);
    for (const rank of [0, 1, 2, 3]) writeFileSync(errorFilePath(last, rank), RECORD);
    writeFileSync(join(last, "1", "core"), "not an error file");
    writeFileSync(errorFilePath(last, 2), Buffer.alloc(MAX_ERROR_FILE_BYTES + 1));
    rmSync(errorFilePath(last, 3));
    symlinkSync(join(parent, "elsewhere"), errorFilePath(last, 3));
    const outside = join(parent, "outside.json");
    writeFileSync(outside, RECORD);
    const keep = [0, 1, 2, 3].map((rank) => errorFilePath(last, rank));
    assert.deepEqual(dir.removeExcept([...keep, outside]), keep.slice(0, 2));
    const left = execFileSync("find", [dir.path], { encoding: "utf8" }).trim().split("\n").sort();
    assert.deepEqual(left, [dir.path, last, join(last, "0"), keep[0], join(last, "1"), keep[1]].sort());
    assert.equal(readFileSync(keep[1]!, "utf8"), RECORD);
    assert.equal(existsSync(outside), true, "a file outside the folder was touched");
  });

  it("removes the whole folder when no named file is there", () => {
    const dir = createErrorFileDir("none", parent);
    const attempt = dir.prepareAttempt(0, 2);
    assert.deepEqual(dir.removeExcept([errorFilePath(attempt, 1)]), []);
    assert.equal(existsSync(dir.path), false);
    const other = createErrorFileDir("empty", parent);
    assert.deepEqual(other.removeExcept([]), []);
    assert.equal(existsSync(other.path), false);
  });
});

describe("readErrorFile", () => {
  const dir = mkdtempSync(join(parent, "read-"));

  it("reads a worker's record, and says absent when there is none", async () => {
    const file = join(dir, "ok.json");
    writeFileSync(file, RECORD);
    const read = await readErrorFile(file);
    assert.equal(read.kind, "read");
    assert.equal(read.kind === "read" && read.error.message, "ValueError: x");
    assert.deepEqual(await readErrorFile(join(dir, "missing.json")), { kind: "absent" });
  });

  it("does not use a file bigger than 1 MiB, naming it and its size", async () => {
    const file = join(dir, "big.json");
    // Valid JSON just past the limit: refused for its size, not for its content.
    const padding = " ".repeat(MAX_ERROR_FILE_BYTES + 1 - RECORD.length);
    writeFileSync(file, RECORD + padding);
    const read = await readErrorFile(file);
    assert.equal(read.kind, "unusable");
    assert.match(
      read.kind === "unusable" ? read.note : "",
      /big\.json is 1048577 bytes, more than the 1048576/,
    );
    writeFileSync(file, RECORD + padding.slice(1));
    assert.equal((await readErrorFile(file)).kind, "read", "a file of exactly 1 MiB is read");
  });

  it("does not use what is not a regular file: a folder, a FIFO (without blocking), a symbolic link", async () => {
    mkdirSync(join(dir, "folder"));
    const fifo = join(dir, "fifo");
    execFileSync("mkfifo", [fifo]);
    symlinkSync(join(dir, "ok.json"), join(dir, "link"));
    for (const [name, why] of [
      ["folder", /is not a regular file/],
      ["fifo", /is not a regular file/],
      ["link", /cannot be read \(ELOOP\)/],
    ] as const) {
      const read = await readErrorFile(join(dir, name));
      assert.equal(read.kind, "unusable", name);
      assert.match(read.kind === "unusable" ? read.note : "", why, name);
    }
  });

  it("says what is wrong with malformed JSON", async () => {
    const file = join(dir, "bad.json");
    writeFileSync(file, '{"message": ');
    const read = await readErrorFile(file);
    assert.match(read.kind === "unusable" ? read.note : "", /bad\.json is not JSON/);
  });
});

describe("writeErrorFile", () => {
  it("replaces what the file held with the record's JSON", async () => {
    const file = join(parent, "agent.json");
    writeFileSync(file, "x".repeat(10_000));
    await writeErrorFile(file, { message: "m", timestamp: 1 });
    assert.deepEqual(JSON.parse(readFileSync(file, "utf8")), { message: "m", timestamp: 1 });
    await assert.rejects(writeErrorFile(join(parent, "no", "such", "dir.json"), {}), { code: "ENOENT" });
  });
});

describe("observeFailures", () => {
  const exit = (localRank: number, over: Partial<WorkerExit> = {}): WorkerExit => ({
    localRank,
    rank: localRank,
    pid: 100 + localRank,
    exitCode: 1,
    signal: null,
    stoppedByAgent: false,
    exitedAtMs: 0,
    ...over,
  });

  it("takes failures and stopped workers that left an error file, with what their files say", async () => {
    const dir = createErrorFileDir("observe", parent);
    const attempt = dir.prepareAttempt(0, 5);
    writeFileSync(errorFilePath(attempt, 1), RECORD);
    writeFileSync(errorFilePath(attempt, 2), "{oops");
    writeFileSync(errorFilePath(attempt, 3), RECORD);
    const first = exit(0);
    const exits = [
      first,
      exit(1),
      exit(2),
      exit(3, { exitCode: 1, stoppedByAgent: true }),
      exit(4, { exitCode: null, signal: "SIGTERM", stoppedByAgent: true }),
      exit(5, { exitCode: 0 }),
    ];
    const observed = await observeFailures(exits, first, attempt);
    assert.deepEqual(
      observed.map((o) => [o.exit.localRank, o.error?.message, o.errorFileNote?.replace(/ \(.*/, "")]),
      [
        [0, undefined, undefined],
        [1, "ValueError: x", undefined],
        [2, undefined, `error file ${errorFilePath(attempt, 2)} is not JSON`],
        [3, "ValueError: x", undefined],
      ],
    );
    assert.deepEqual(observed[1]?.data, JSON.parse(RECORD));
    assert.deepEqual(
      (await observeFailures(exits, first, undefined)).map((o) => o.exit.localRank),
      [0, 1, 2],
    );
    dir.remove();
  });
});
