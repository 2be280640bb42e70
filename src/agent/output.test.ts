import assert from "node:assert/strict";
import { PassThrough, Writable } from "node:stream";
import { describe, it } from "node:test";
import { createWorkerOutput, LineSplitter, TailBuffer } from "./output.js";
import { formatStatus } from "./status-line.js";

describe("LineSplitter", () => {
  it("carries partial lines across chunks and strips \\r\\n", () => {
    const s = new LineSplitter();
    assert.deepEqual(s.push("a"), []);
    assert.deepEqual(s.push("b\r\nc\n\nd"), ["ab", "c", ""]);
    assert.deepEqual(s.flush(), ["d"]);
    assert.deepEqual(s.flush(), []);
  });
});

describe("TailBuffer", () => {
  it("keeps the last lines, the partial one included, each cut to a width", () => {
    const t = new TailBuffer(2, 5);
    t.push("one\ntwo\nthree-long\nfour");
    assert.deepEqual(t.lines(), ["three…", "four"]);
  });
});

function collect(): { stream: Writable; text: () => string } {
  let text = "";
  const stream = new Writable({
    write(chunk, _enc, cb) {
      text += String(chunk);
      cb();
    },
  });
  return { stream, text: () => text };
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
    const source = new PassThrough({ encoding: "utf8" });
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
    const source = new PassThrough({ encoding: "utf8" });
    output.attach(0, "stderr", source);
    source.end("50%\r100%");
    await new Promise((r) => source.on("end", r));
    assert.equal(err.text(), "50%\r100%");
  });

  it("without a prefix, never interleaves two workers within a line", async () => {
    const out = collect();
    const output = createWorkerOutput({ prefix: false, stdout: out.stream, stderr: collect().stream });
    const a = new PassThrough({ encoding: "utf8" });
    const b = new PassThrough({ encoding: "utf8" });
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
});

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
