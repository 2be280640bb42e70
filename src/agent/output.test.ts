import assert from "node:assert/strict";
import { randomBytes, randomInt } from "node:crypto";
import { PassThrough, Writable } from "node:stream";
import { describe, it } from "node:test";
import { createWorkerOutput, LineSplitter, MAX_HELD_BYTES, TailBuffer } from "./output.js";
import { formatStatus } from "./status-line.js";

const latin1 = (text: string): Buffer => Buffer.from(text, "latin1");
const texts = (lines: Buffer[]): string[] => lines.map((l) => l.toString("latin1"));

describe("LineSplitter", () => {
  it("carries partial lines across chunks, each line with its line end as written", () => {
    const s = new LineSplitter();
    assert.deepEqual(s.push(latin1("a")), []);
    assert.deepEqual(texts(s.push(latin1("b\r\nc\n\nd"))), ["ab\r\n", "c\n", "\n"]);
    assert.deepEqual(texts(s.flush()), ["d"]);
    assert.deepEqual(s.flush(), []);
  });

  it("holds at most MAX_HELD_BYTES of a line without a newline, passing it on in pieces", () => {
    const s = new LineSplitter();
    const chunk = latin1("x".repeat(1000));
    let out = 0;
    let most = 0;
    for (let i = 0; i < 2000; i++) {
      for (const line of s.push(chunk)) {
        assert.ok(line.length <= MAX_HELD_BYTES + chunk.length);
        out += line.length;
      }
      most = Math.max(most, s.heldBytes);
    }
    out += s.flush().reduce((n, l) => n + l.length, 0);
    assert.equal(out, 2000 * chunk.length);
    assert.ok(most <= MAX_HELD_BYTES + chunk.length, `held ${most} bytes`);
    assert.deepEqual(texts(s.push(latin1("\nnext\n"))), ["\n", "next\n"]);
  });
});

describe("TailBuffer", () => {
  it("keeps the last lines, the partial one included, each cut to a width", () => {
    const t = new TailBuffer(2, 5);
    t.push("one\ntwo\nthree-long\nfour");
    assert.deepEqual(t.lines(), ["three…", "four"]);
  });

  it("keeps what a terminal shows of a line that \\r rewrites, across chunks", () => {
    const t = new TailBuffer(3, 20);
    t.push("a\r\nb\rbb\r");
    t.push("\nprogress 1%\rprogress 2");
    t.push("%\rprogress 3%");
    assert.deepEqual(t.lines(), ["a", "bb", "progress 3%"]);
    t.push("\r\nboom\n");
    assert.deepEqual(t.lines(), ["bb", "progress 3%", "boom"]);
  });

  it("shows bytes that are not UTF-8 as U+FFFD", () => {
    const t = new TailBuffer();
    t.push(Buffer.from([0x66, 0xff, 0x6f, 0x0a, 0xe2, 0x82]));
    assert.deepEqual(t.lines(), ["f\ufffdo", "\ufffd"]);
  });

  it("stays bounded by its lines and width for megabytes of progress output without a newline", () => {
    const t = new TailBuffer(2, 50);
    const bar = `\r${"z".repeat(99)}`;
    for (let i = 0; i < 500; i++) t.push(bar.repeat(100));
    t.push(`\rlast ${"y".repeat(200)}`);
    assert.deepEqual(t.lines(), [`last ${"y".repeat(45)}…`]);
    t.push("\nTraceback\n");
    assert.deepEqual(t.lines(), [`last ${"y".repeat(45)}…`, "Traceback"]);
  });
});

function collect(): { stream: Writable; text: () => string; bytes: () => Buffer } {
  const chunks: Buffer[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk);
      cb();
    },
  });
  const bytes = (): Buffer => Buffer.concat(chunks);
  return { stream, text: () => bytes().toString("utf8"), bytes };
}

describe("createWorkerOutput", () => {
  it("prefixes whole lines with the rank, flushing the partial last line at the end", async () => {
    const out = collect();
    const err = collect();
    let hides = 0;
    const output = createWorkerOutput({
      prefix: true,
      stdout: out.stream,
      stderr: err.stream,
      beforeWrite: () => hides++,
    });
    const source = new PassThrough();
    output.attach(3, "stdout", source);
    source.write("hel");
    source.write("lo\nwor");
    source.end("ld");
    await new Promise((r) => source.on("end", r));
    assert.equal(out.text(), "[rank3]: hello\n[rank3]: world\n");
    assert.equal(err.text(), "");
    assert.ok(hides >= 2);
  });

  it("passes chunks through untouched without a prefix", async () => {
    const err = collect();
    const output = createWorkerOutput({ prefix: false, stdout: collect().stream, stderr: err.stream });
    const source = new PassThrough();
    output.attach(0, "stderr", source);
    source.end("50%\r100%");
    await new Promise((r) => source.on("end", r));
    assert.equal(err.text(), "50%\r100%");
  });

  it("without a prefix, never interleaves two workers within a line", async () => {
    const out = collect();
    const output = createWorkerOutput({ prefix: false, stdout: out.stream, stderr: collect().stream });
    const a = new PassThrough();
    const b = new PassThrough();
    output.attach(0, "stdout", a);
    output.attach(1, "stdout", b);
    a.write("rank 0: sum");
    await new Promise((r) => setImmediate(r));
    b.write("rank 1: sum\n");
    await new Promise((r) => setImmediate(r));
    a.end("\n");
    b.end();
    await Promise.all([new Promise((r) => a.on("end", r)), new Promise((r) => b.on("end", r))]);
    assert.equal(out.text(), "rank 1: sum\nrank 0: sum\n");
  });

  it("without a prefix, passes a line longer than MAX_HELD_BYTES on in bounded pieces", async () => {
    const pieces: number[] = [];
    const out = new Writable({
      write(chunk: Buffer, _enc, cb) {
        pieces.push(chunk.length);
        cb();
      },
    });
    const output = createWorkerOutput({ prefix: false, stdout: out, stderr: collect().stream });
    const source = new PassThrough();
    output.attach(0, "stdout", source);
    const chunk = "y".repeat(4096);
    for (let i = 0; i < 100; i++) source.write(chunk);
    source.end();
    await new Promise((r) => source.on("end", r));
    assert.equal(
      pieces.reduce((a, b) => a + b, 0),
      100 * chunk.length,
    );
    assert.ok(Math.max(...pieces) <= MAX_HELD_BYTES + chunk.length, `pieces ${pieces.join(",")}`);
  });

  it("passes random bytes through untouched without a prefix", async () => {
    const data = randomBytes(100_000);
    const out = collect();
    const source = new PassThrough();
    createWorkerOutput({ prefix: false, stdout: out.stream, stderr: collect().stream }).attach(
      0,
      "stdout",
      source,
    );
    await feed(source, data);
    assert.ok(out.bytes().equals(data));
  });

  it("with a prefix, splits random bytes at the newline byte and keeps every byte", async () => {
    const data = randomBytes(100_000);
    const out = collect();
    const source = new PassThrough();
    createWorkerOutput({ prefix: true, stdout: out.stream, stderr: collect().stream }).attach(
      5,
      "stdout",
      source,
    );
    await feed(source, data);
    const tag = Buffer.from("[rank5]: ");
    const expected: Buffer[] = [];
    for (let start = 0; start < data.length; ) {
      const nl = data.indexOf(0x0a, start);
      const end = nl < 0 ? data.length : nl + 1;
      expected.push(tag, data.subarray(start, end), nl < 0 ? Buffer.from("\n") : Buffer.alloc(0));
      start = end;
    }
    assert.ok(out.bytes().equals(Buffer.concat(expected)));
  });

  it("pauses every worker behind a full stream with one 'drain' listener, and resumes them all", async () => {
    let received = 0;
    let mostListeners = 0;
    const slow: Writable = new Writable({
      highWaterMark: 1024,
      write(chunk: Buffer, _enc, cb) {
        received += chunk.length;
        mostListeners = Math.max(mostListeners, slow.listenerCount("drain"));
        setTimeout(cb, 1);
      },
    });
    const warnings: Error[] = [];
    const onWarning = (w: Error): number => warnings.push(w);
    process.on("warning", onWarning);
    try {
      const output = createWorkerOutput({ prefix: false, stdout: slow, stderr: collect().stream });
      const sources = Array.from({ length: 16 }, () => new PassThrough());
      for (const [rank, source] of sources.entries()) output.attach(rank, "stdout", source);
      const line = Buffer.from(`${"x".repeat(1023)}\n`);
      await Promise.all(sources.map((source) => feed(source, Buffer.concat(Array(20).fill(line)))));
      await new Promise((resolve) => slow.end(resolve));
    } finally {
      process.off("warning", onWarning);
    }
    assert.equal(received, 16 * 20 * 1024);
    assert.equal(mostListeners, 1);
    assert.deepEqual(warnings, []);
  });

  it("drops output to a stream that failed (EPIPE) and keeps reading the workers", async () => {
    let writes = 0;
    const broken = new Writable({
      highWaterMark: 16,
      write(_chunk, _enc, cb) {
        writes++;
        setImmediate(() => cb(Object.assign(new Error("write EPIPE"), { code: "EPIPE" })));
      },
    });
    const output = createWorkerOutput({ prefix: true, stdout: broken, stderr: collect().stream });
    const source = new PassThrough();
    output.attach(0, "stdout", source);
    // All of it is read (a paused worker stream would never end), and nothing is written after the error.
    await feed(source, Buffer.from("line\n".repeat(100_000)));
    assert.equal(writes, 1);
  });
});

/** Writes `data` to `source` in random pieces and ends it; resolves once it was read to the end. */
async function feed(source: PassThrough, data: Buffer): Promise<void> {
  for (let start = 0; start < data.length; ) {
    const end = Math.min(data.length, start + randomInt(1, 5000));
    source.write(data.subarray(start, end));
    start = end;
  }
  source.end();
  await new Promise((resolve) => source.on("end", resolve));
}

describe("formatStatus", () => {
  it("shows round, nodes against the range, workers and restarts", () => {
    const base = { minNodes: 1, maxNodes: 4, restarts: 1, maxRestarts: 3 };
    assert.equal(
      formatStatus({ ...base, phase: "running", round: 2, nodes: 3, workers: 8 }),
      "rdzv: round 2 · 3/1..4 nodes · 8 workers running · restarts 1/3",
    );
    assert.match(formatStatus({ ...base, minNodes: 4, phase: "joining" }), /needs 4 nodes/);
    assert.match(
      formatStatus({ ...base, phase: "restarting", reason: "a worker failed" }),
      /a worker failed/,
    );
  });
});
