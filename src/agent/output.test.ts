import assert from "node:assert/strict";
import { randomBytes, randomInt } from "node:crypto";
import { PassThrough, Writable } from "node:stream";
import { describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { createWorkerOutput, HOLD_MS, MAX_HELD_BYTES, TailBuffer } from "./output.js";
import { formatStatus } from "./status-line.js";

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
    const { out, a, b, ended } = twoWorkers(false);
    a.write("rank 0: sum");
    await new Promise((r) => setImmediate(r));
    b.write("rank 1: sum\n");
    await new Promise((r) => setImmediate(r));
    a.end("\n");
    b.end();
    await ended();
    assert.equal(out.text(), "rank 1: sum\nrank 0: sum\n");
  });

  for (const prefix of [false, true]) {
    it(`${prefix ? "with" : "without"} a prefix, passes a line longer than MAX_HELD_BYTES on in bounded pieces`, async () => {
      const pieces: Buffer[] = [];
      const out = new Writable({
        write(chunk: Buffer, _enc, cb) {
          pieces.push(chunk);
          cb();
        },
      });
      const output = createWorkerOutput({ prefix, stdout: out, stderr: collect().stream });
      const source = new PassThrough();
      output.attach(0, "stdout", source);
      const chunk = Buffer.alloc(1000, "y");
      await feed(source, Buffer.concat(Array(2000).fill(chunk)), 1000);
      const tag = prefix ? "[rank0]: " : "";
      assert.equal(Buffer.concat(pieces).toString(), `${tag}${"y".repeat(2000 * 1000)}${prefix ? "\n" : ""}`);
      const most = Math.max(...pieces.map((p) => p.length));
      assert.ok(most <= MAX_HELD_BYTES + chunk.length + tag.length, `a write of ${most} bytes`);
    });
  }

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

  it("with a prefix, keeps every byte of random bytes, a prefix before each line and \\r rewrite", async () => {
    const data = randomBytes(100_000);
    const out = collect();
    const source = new PassThrough();
    createWorkerOutput({ prefix: true, stdout: out.stream, stderr: collect().stream }).attach(
      5,
      "stdout",
      source,
    );
    await feed(source, data);
    // Byte by byte: a prefix where a line or a rewrite starts, but not before the \n of a \r\n nor before a
    // \r that rewrites nothing yet; and a \n after a last line that has none.
    const tag = [...Buffer.from("[rank5]: ")];
    const expected: number[] = [];
    let atStart = true;
    let afterCR = false;
    for (const [i, byte] of data.entries()) {
      if (atStart && (byte === 0x0d ? data[i + 1] === 0x0a : !(byte === 0x0a && afterCR))) {
        expected.push(...tag);
      }
      expected.push(byte);
      atStart = byte === 0x0a || byte === 0x0d;
      afterCR = byte === 0x0d;
    }
    if (data.at(-1) !== 0x0a) expected.push(0x0a);
    assert.ok(out.bytes().equals(Buffer.from(expected)));
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

describe("createWorkerOutput: unfinished lines", () => {
  /** Resolves once `text()` is `expected`; fails after 5 s (never a timing assertion: only an upper bound). */
  async function until(text: () => string, expected: string): Promise<void> {
    for (let waited = 0; text() !== expected; waited += 10) {
      if (waited > 5000) assert.equal(text(), expected);
      await delay(10);
    }
  }

  it(`with a prefix, shows a \\r progress bar after ${HOLD_MS} ms, each rewrite prefixed`, async () => {
    const out = collect();
    const output = createWorkerOutput({ prefix: true, stdout: collect().stream, stderr: out.stream });
    const source = new PassThrough();
    output.attach(2, "stderr", source);
    source.write("\r 10%|#   |");
    await delay(0);
    assert.equal(out.text(), "", "held back: no \\n yet");
    await until(out.text, "\r[rank2]:  10%|#   |");
    source.write("\r 20%|##  |");
    source.end("\r100%|####|\n");
    await new Promise((r) => source.on("end", r));
    assert.equal(out.text(), "\r[rank2]:  10%|#   |\r[rank2]:  20%|##  |\r[rank2]: 100%|####|\n");
  });

  it("with a prefix, another worker's line first ends an unfinished one, which goes on with a prefix", async () => {
    const { out, a, b, ended } = twoWorkers(true);
    a.write("loading...");
    await until(out.text, "[rank0]: loading...");
    b.end("hello\n");
    a.end(" done\r\n");
    await ended();
    assert.equal(out.text(), "[rank0]: loading...\n[rank1]: hello\n[rank0]:  done\r\n");
  });

  it("with a prefix, the line end of a line another worker ended already is not written again", async () => {
    const { out, a, b, ended } = twoWorkers(true);
    a.write("\r 50%");
    await until(out.text, "\r[rank0]:  50%");
    b.end("x\n");
    a.end("\n");
    await ended();
    assert.equal(out.text(), "\r[rank0]:  50%\n[rank1]: x\n");
  });

  it("without a prefix, shows a prompt without a line end after the hold, untouched", async () => {
    const out = collect();
    const output = createWorkerOutput({ prefix: false, stdout: out.stream, stderr: collect().stream });
    const source = new PassThrough();
    output.attach(0, "stdout", source);
    source.write("> foo.py(3)<module>()\n(Pdb) ");
    await delay(0);
    assert.equal(out.text(), "> foo.py(3)<module>()\n");
    await until(out.text, "> foo.py(3)<module>()\n(Pdb) ");
    source.end("--Return--\n");
    await new Promise((r) => source.on("end", r));
    assert.equal(out.text(), "> foo.py(3)<module>()\n(Pdb) --Return--\n");
  });
});

/**
 * Workers 0 and 1 writing to one collected stdout (`prefix` as --prefix-output); `ended()` resolves once
 * both sources, ended by the test, were read to their end.
 */
function twoWorkers(prefix: boolean) {
  const out = collect();
  const output = createWorkerOutput({ prefix, stdout: out.stream, stderr: collect().stream });
  const a = new PassThrough();
  const b = new PassThrough();
  output.attach(0, "stdout", a);
  output.attach(1, "stdout", b);
  const ended = () => Promise.all([new Promise((r) => a.on("end", r)), new Promise((r) => b.on("end", r))]);
  return { out, a, b, ended };
}

/** Writes `data` to `source` in pieces (random ones by default) and ends it; resolves once it was read. */
async function feed(source: PassThrough, data: Buffer, pieceBytes?: number): Promise<void> {
  for (let start = 0; start < data.length; ) {
    const end = Math.min(data.length, start + (pieceBytes ?? randomInt(1, 5000)));
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
