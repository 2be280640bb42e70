/**
 * Live-server fuzzing: many connections send random and mutated frames (cut into chunks, written a tick
 * apart) to a real `TCPStoreServer` while a well-behaved rdzv client keeps working beside them. Afterwards
 * the server is still serving, the good client's keys are intact, and no connection, waiter or barrier
 * party is left behind (connections are counted). Sessions come from a fixed seed (printed; another with
 * `RDZV_FUZZ_SEED`), as many as `RDZV_FUZZ_SCALE` scales.
 */

import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { connectTCPStore, type TCPStore } from "../src/store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../src/store/tcp/server.js";
import {
  cuts,
  fuzzRuns,
  fuzzSeed,
  garbageStream,
  mutatedStream,
  split,
} from "./helpers/protocol-arbitraries.js";

const HOST = "127.0.0.1";
/** The sessions' seed: fixed, so a failure repeats; `RDZV_FUZZ_SEED=N` explores others. */
const SEED = fuzzSeed(20_261_125);
const GOOD_KEYS = 200;
/** Longer than any fuzzed key (12 bytes before mutation), so no fuzzed SET or DELETE can name one. */
const goodKey = (i: number): string => `well-behaved-client/keys/${String(i).padStart(4, "0")}`;
const goodValue = (i: number): string => `value ${i} of the well-behaved client`;

/** How a fuzz session ends once its bytes are written. */
type Ending = "end" | "destroy" | "linger";

interface Session {
  bytes: Buffer;
  at: number[];
  ending: Ending;
}

const session: fc.Arbitrary<Session> = fc.record({
  bytes: fc.oneof({ weight: 3, arbitrary: mutatedStream }, { weight: 1, arbitrary: garbageStream }),
  at: cuts,
  ending: fc.constantFrom<Ending>("end", "destroy", "linger"),
});

/** Runs one session; resolves once its socket is closed (lingering ones: by the server, or at `deadline`). */
async function run(port: number, s: Session, lingering: Set<Socket>): Promise<void> {
  const socket = connect({ host: HOST, port });
  socket.on("error", () => {});
  socket.on("data", () => {}); // read (and drop) replies, so the server never blocks on writes
  const closed = new Promise((resolve) => socket.once("close", resolve));
  await once(socket, "connect").catch(() => {});
  for (const chunk of split(s.bytes, s.at)) {
    if (socket.destroyed) break;
    socket.write(chunk);
    await new Promise((r) => setImmediate(r));
  }
  if (s.ending === "end") socket.end();
  else if (s.ending === "destroy") socket.destroy();
  else lingering.add(socket);
  if (s.ending !== "linger") await closed;
}

async function until(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("live TCPStore server under fuzzed connections", () => {
  let server: TCPStoreServer;
  let good: TCPStore;

  before(async () => {
    server = await createTCPStoreServer({
      host: HOST,
      port: 0,
      limits: { maxKeyBytes: 1024, maxValueBytes: 4096, maxKeysPerRequest: 64, maxWaitersPerConnection: 64 },
      // Lingering sessions holding half a frame are reaped; those parked in a WAIT stay until closed.
      timeouts: { incompleteRequestMs: 500 },
    });
    good = await connectTCPStore({ host: HOST, port: server.port, timeoutMs: 30_000 });
    for (let i = 0; i < GOOD_KEYS; i++) await good.set(goodKey(i), goodValue(i));
  });

  after(async () => {
    await good?.close();
    await server?.close();
  });

  it("keeps serving, keeps the good client's keys, and leaks no connection", {
    timeout: 300_000,
  }, async (t) => {
    const sessions = fc.sample(session, { numRuns: fuzzRuns(2000), seed: SEED });
    const bytes = sessions.reduce((n, s) => n + s.bytes.length, 0);
    t.diagnostic(`seed ${SEED}: ${sessions.length} fuzz connections, ${bytes} bytes`);
    const blocked = good.get("well-behaved-client/late", { timeoutMs: 120_000 });
    const lingering = new Set<Socket>();
    const concurrency = 32;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < sessions.length) {
        await run(server.port, sessions[next++]!, lingering);
        // The good client works all along: a counter only it touches counts every round.
        assert.ok((await good.add("well-behaved-client/rounds", 1)) > 0);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    for (const socket of lingering) socket.destroy();

    const base = server.stats();
    t.diagnostic(
      `closed for bad input: ${base.protocolErrors}, reaped: ${base.reaped}, requests: ${JSON.stringify(base.opsByType)}`,
    );
    assert.ok(base.protocolErrors > 0, "the fuzz reached the error paths");
    // Only the good client's connections remain: its main connection and the one its blocked get holds.
    await until(
      () => server.stats().connections === 1 + good.waitConnections,
      "the fuzz connections are gone",
    );
    await good.set("well-behaved-client/late", "now");
    assert.equal(Buffer.from(await blocked).toString(), "now");
    await until(() => server.stats().waiters === 0, "no waiter or barrier party is left");

    for (let i = 0; i < GOOD_KEYS; i++) {
      assert.equal(Buffer.from(await good.get(goodKey(i))).toString(), goodValue(i), goodKey(i));
    }
    assert.equal(await good.add("well-behaved-client/rounds", 0), sessions.length);
    const fresh = await connectTCPStore({ host: HOST, port: server.port, timeoutMs: 10_000 });
    assert.equal(Buffer.from(await fresh.get(goodKey(0))).toString(), goodValue(0));
    await fresh.close();
  });
});
