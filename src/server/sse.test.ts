import assert from "node:assert/strict";
import { once } from "node:events";
import { connect } from "node:net";
import { describe, it } from "node:test";
import { startHttpServer } from "./http-server.js";
import { createSseStream, type SseClient, type SseDrop, type SseStream } from "./sse.js";

/** A stream with its client handle and what `close` was called with. */
function open(options: { maxBacklogBytes?: number; maxStallMs?: number; now?: () => number } = {}) {
  let client: SseClient | undefined;
  const closes: (SseDrop | undefined)[] = [];
  const stream = createSseStream({
    ...options,
    open: (c) => {
      client = c;
    },
    close: (drop) => closes.push(drop),
  });
  assert.ok(client !== undefined);
  return { stream, client, closes };
}

const message = (bytes: number) => ({ event: "run", data: "x".repeat(bytes) });

/** Reads `stream` until `bytes` were read; returns what came. */
async function take(reader: ReadableStreamDefaultReader<Uint8Array>, bytes: number): Promise<number> {
  let got = 0;
  while (got < bytes) {
    const { done, value } = await reader.read();
    if (done) break;
    got += value.length;
  }
  return got;
}

describe("event stream backlog", () => {
  it("drops a client that never reads once its backlog passes the bound, which it never exceeds", async () => {
    const bound = 64 * 1024;
    const { stream, client, closes } = open({ maxBacklogBytes: bound });
    let most = 0;
    let sent = 0;
    for (; sent < 1000 && client.send(message(10_000)); sent++) most = Math.max(most, stream.backlogBytes);
    assert.ok(sent >= 5 && sent < 10, `dropped after ${sent} messages of 10 kB`);
    assert.ok(most <= bound, `backlog reached ${most} bytes`);
    assert.equal(stream.backlogBytes, 0, "the backlog is let go");
    assert.equal(closes.length, 1);
    assert.equal(closes[0]?.reason, "backlog");
    assert.ok((closes[0]?.backlogBytes ?? 0) > bound);
    assert.equal(client.send(message(10)), false, "later sends are refused");
    await assert.rejects(stream.body.getReader().read(), /dropped \(backlog/);
  });

  it("keeps a client that reads, and lets one message larger than the bound out", async () => {
    const { stream, client, closes } = open({ maxBacklogBytes: 16 * 1024 });
    const reader = stream.body.getReader();
    await take(reader, "retry: 1000\n\n".length);
    for (let i = 0; i < 200; i++) {
      assert.ok(client.send(message(12_000)), `message ${i}`);
      await take(reader, 12_000);
    }
    assert.ok(client.send(message(200_000)), "one big message");
    const first = await reader.read();
    assert.equal(first.value?.length, 64 * 1024, "handed over in steps");
    assert.ok((await take(reader, 200_000 - 64 * 1024)) >= 200_000 - 64 * 1024);
    assert.deepEqual(closes, []);
    stream.end();
    assert.deepEqual(closes, [undefined]);
  });

  it("drops a client that took nothing for maxStallMs while events waited", async () => {
    let now = 1_000_000;
    const { stream, client, closes } = open({ maxStallMs: 30_000, now: () => now });
    const reader = stream.body.getReader();
    await take(reader, "retry: 1000\n\n".length);
    // Idle for long, with nothing waiting: not a stall.
    now += 60_000;
    assert.ok(client.send(message(10)));
    await take(reader, 1);
    // Something waits, the client takes nothing.
    assert.ok(client.send(message(10)));
    assert.ok(client.send(message(10)));
    now += 29_000;
    assert.ok(client.send(message(10)));
    now += 2_000;
    assert.equal(client.send(message(10)), false);
    assert.equal(closes[0]?.reason, "stalled");
    assert.equal(closes[0]?.stalledMs, 31_000);
    await assert.rejects(reader.read(), /dropped \(stalled/);
  });

  it("refuses bounds that are not positive integers", () => {
    assert.throws(() => open({ maxBacklogBytes: 0 }), { code: "RDZV_INVALID_ARGUMENT" });
    assert.throws(() => open({ maxStallMs: 1.5 }), { code: "RDZV_INVALID_ARGUMENT" });
  });

  it("over HTTP: the connection of a client that stopped reading is closed, and its backlog stays bounded", async () => {
    const bound = 256 * 1024;
    let stream: SseStream | undefined;
    let client: SseClient | undefined;
    let dropped: SseDrop | undefined;
    const http = await startHttpServer({
      port: 0,
      fetch: async () => {
        stream = createSseStream({
          maxBacklogBytes: bound,
          open: (c) => {
            client = c;
          },
          close: (drop) => {
            dropped = drop;
          },
        });
        return new Response(stream.body, { headers: { "content-type": "text/event-stream" } });
      },
    });
    const socket = connect(http.port, "127.0.0.1");
    try {
      await once(socket, "connect");
      socket.write("GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
      socket.pause(); // never reads: the kernel's buffers fill, then the server's
      for (let i = 0; client === undefined && i < 100; i++) await new Promise((r) => setTimeout(r, 10));
      let most = 0;
      let sent = 0;
      // Far more than loopback's socket buffers hold, at a pace the event loop keeps up with.
      for (; sent < 4000 && client!.send(message(32 * 1024)); sent++) {
        most = Math.max(most, stream!.backlogBytes);
        if (sent % 8 === 0) await new Promise((r) => setImmediate(r));
      }
      assert.ok(sent < 4000, "the client was dropped");
      assert.ok(most <= bound, `backlog reached ${most} bytes`);
      assert.equal(dropped?.reason, "backlog");
      // The server closed the connection while the client still reads nothing: bytes written to it
      // are refused (the first draws a reset, a later write fails).
      let err: NodeJS.ErrnoException | undefined;
      socket.on("error", (e) => {
        err = e;
      });
      for (let i = 0; i < 150 && err === undefined; i++) {
        socket.write("\r\n"); // blank lines before a request line: harmless to the HTTP parser
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.ok(["ECONNRESET", "EPIPE"].includes(err?.code ?? ""), `the connection is open (${String(err)})`);
    } finally {
      socket.destroy();
      await http.close();
    }
  });
});
