/**
 * The TCP store's per-address limits with real sockets: the wrong-token throttle of AUTH (rdzv's client
 * and raw sockets) and the connection cap. Distinct client addresses come from binding raw sockets to
 * other loopback addresses (127.0.0.2, 127.0.0.3: all of 127.0.0.0/8 is loopback on Linux).
 */

import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import { recordingLogger } from "../../../test/helpers/recording-logger.js";
import { HOST, TcpFixtures } from "../../../test/helpers/tcp-fixtures.js";
import { waitFor } from "../../../test/helpers/wait-for.js";
import { ErrorCode, RendezvousAuthError } from "../../errors.js";
import { connectTCPStore } from "./client.js";
import { encodeRequest } from "./encode.js";
import { type Request, VALIDATION_MAGIC } from "./protocol.js";
import type { TCPStoreServer } from "./server.js";

const TOKEN = "correct horse battery staple";
const VALIDATE: Request = { type: "validate", magic: VALIDATION_MAGIC };
const fx = new TcpFixtures();
afterEach(() => fx.cleanup());

function fakeClock(): { now: () => number; advance: (ms: number) => void } {
  let t = Date.now();
  return {
    now: () => t,
    advance: (ms) => {
      t += ms;
    },
  };
}

/** A raw v2 connection from `localAddress`; `replies` collects what the server sends. */
async function rawConnection(
  server: TCPStoreServer,
  localAddress: string,
): Promise<{ socket: Socket; replies: () => Buffer; closed: Promise<unknown>; isClosed: () => boolean }> {
  const socket = connect({ host: HOST, port: server.port, localAddress });
  socket.on("error", () => {});
  fx.defer(() => socket.destroy());
  const chunks: Buffer[] = [];
  socket.on("data", (c: Buffer) => chunks.push(c));
  let isClosed = false;
  const closed = once(socket, "close").then(() => {
    isClosed = true;
  });
  await once(socket, "connect");
  return { socket, replies: () => Buffer.concat(chunks), closed, isClosed: () => isClosed };
}

/** AUTH with `token` from `localAddress`: everything the server answered, once it answered or closed. */
async function rawAuth(server: TCPStoreServer, localAddress: string, token: string): Promise<Buffer> {
  const c = await rawConnection(server, localAddress);
  c.socket.write(
    Buffer.concat(
      [VALIDATE, { type: "auth", token: Buffer.from(token) } as Request].map((r) => encodeRequest("v2", r)),
    ),
  );
  // Accepted (00): the connection stays open; any other answer closes it.
  await waitFor("an AUTH reply", () => c.isClosed() || c.replies()[0] === 0);
  return c.replies();
}

const wrongToken = (server: TCPStoreServer, guess: string) =>
  assert.rejects(
    connectTCPStore({ host: HOST, port: server.port, timeoutMs: 60_000, authToken: guess }),
    (err: Error & { code?: string }) =>
      err.code === ErrorCode.Auth && /rejected the auth token/.test(err.message),
  );

describe("TCPStore wrong-token throttle", () => {
  it("refuses a throttled address even with the right token until the window passes; others are not affected", async () => {
    const c = fakeClock();
    const logger = recordingLogger();
    const server = await fx.server({
      authToken: TOKEN,
      authThrottle: { maxFailures: 3, windowMs: 60_000, now: c.now },
      logger,
    });
    const before = await fx.client(server, { authToken: TOKEN });
    for (let i = 0; i < 3; i++) await wrongToken(server, `guess ${i}`);
    // 127.0.0.1 is locked out: rdzv's client says so, for how long, with RDZV_AUTH and no retrying.
    const err = await connectTCPStore({
      host: HOST,
      port: server.port,
      timeoutMs: 60_000,
      authToken: TOKEN,
    }).then(
      () => assert.fail("a throttled address connected"),
      (e: unknown) => e,
    );
    assert.ok(err instanceof RendezvousAuthError, String(err));
    assert.equal(err.code, ErrorCode.Auth);
    assert.match(
      err.message,
      /refuses authentication from this address for 60 s more.*too many wrong auth tokens/,
    );
    assert.equal(err.retryAfterMs, 60_000);
    // The raw reply: Throttled (02), then the ms left (u32), and the connection closed.
    c.advance(15_000);
    assert.deepEqual(await rawAuth(server, "127.0.0.1", TOKEN), Buffer.from([2, 0xc8, 0xaf, 0, 0])); // 45,000
    // Another address with the right token is served; the connection made before keeps working.
    assert.deepEqual(await rawAuth(server, "127.0.0.2", TOKEN), Buffer.from([0]));
    assert.equal(await before.add("n", 1), 1);
    const stats = server.stats();
    assert.equal(stats.authFailures, 3);
    assert.equal(stats.authThrottled, 2);
    // One warning for the lockout; none for the refused attempts.
    const lockouts = logger.warnings.filter((w) => /too many wrong auth tokens/.test(w.message));
    assert.deepEqual(
      lockouts.map((w) => w.fields),
      [{ address: "127.0.0.1", maxFailures: 3, lockedMs: 60_000 }],
    );
    assert.equal(logger.warnings.filter((w) => /throttled/.test(JSON.stringify(w))).length, 0);
    // Once the window passed, the right token works again.
    c.advance(45_000);
    const after = await fx.client(server, { authToken: TOKEN });
    assert.equal(await after.add("n", 1), 2);
  });

  it("does not check the token of a throttled address: a wrong one is not counted either", async () => {
    const c = fakeClock();
    const server = await fx.server({ authToken: TOKEN, authThrottle: { maxFailures: 2, now: c.now } });
    assert.deepEqual(await rawAuth(server, "127.0.0.3", "a"), Buffer.from([1]));
    assert.deepEqual(await rawAuth(server, "127.0.0.3", "b"), Buffer.from([1]));
    for (const token of ["c", TOKEN]) {
      const reply = await rawAuth(server, "127.0.0.3", token);
      assert.equal(reply[0], 2, `AUTH ${token}: throttled`);
    }
    assert.equal(server.stats().authFailures, 2);
    assert.equal(server.stats().authThrottled, 2);
  });

  it("counts one stale token once: a job retrying it does not lock out its address, a new guess still counts", async () => {
    const c = fakeClock();
    const logger = recordingLogger();
    const server = await fx.server({
      authToken: TOKEN,
      authThrottle: { maxFailures: 3, windowMs: 60_000, now: c.now },
      logger,
    });
    // 30 processes of one job (one address: a NAT, a host) with last week's token.
    for (let i = 0; i < 30; i++) await wrongToken(server, "last week's token");
    // A neighbour at that address with the right token is served.
    assert.deepEqual(await rawAuth(server, "127.0.0.1", TOKEN), Buffer.from([0]));
    assert.equal(server.stats().authFailures, 30, "every wrong token is refused and counted as a failure");
    assert.equal(server.stats().authThrottled, 0);
    // Two new guesses use up the budget of 3 (the stale token was the first).
    await wrongToken(server, "guess 1");
    assert.deepEqual(await rawAuth(server, "127.0.0.1", "guess 2"), Buffer.from([1]));
    assert.equal((await rawAuth(server, "127.0.0.1", TOKEN))[0], 2, "locked out");
    assert.equal(logger.warnings.filter((w) => /too many wrong auth tokens/.test(w.message)).length, 1);
    // After the window, the stale token counts again (once).
    c.advance(60_000);
    for (let i = 0; i < 5; i++) await wrongToken(server, "last week's token");
    assert.deepEqual(await rawAuth(server, "127.0.0.1", TOKEN), Buffer.from([0]));
  });

  it("with maxFailures 0, never throttles", async () => {
    const server = await fx.server({ authToken: TOKEN, authThrottle: { maxFailures: 0 } });
    for (let i = 0; i < 20; i++)
      assert.deepEqual(await rawAuth(server, "127.0.0.1", "guess"), Buffer.from([1]));
    const store = await fx.client(server, { authToken: TOKEN });
    assert.equal(await store.add("n", 1), 1);
  });
});

describe("TCPStore per-address connection cap", () => {
  /** A raw connection from `localAddress` that completed the handshake (its PING answered). */
  async function pinged(server: TCPStoreServer, localAddress: string) {
    const c = await rawConnection(server, localAddress);
    c.socket.write(
      Buffer.concat([VALIDATE, { type: "ping", nonce: 9 } as Request].map((r) => encodeRequest("v2", r))),
    );
    await waitFor("the PING reply", () => c.replies().length >= 4);
    return c;
  }

  it("closes a connection beyond the cap at once, logging once; the others and other addresses keep working", {
    timeout: 10_000,
  }, async () => {
    const logger = recordingLogger();
    const server = await fx.server({
      limits: { maxConnectionsPerAddress: 3 },
      capLoopbackConnections: true,
      logger,
    });
    const open = [];
    for (let i = 0; i < 3; i++) open.push(await pinged(server, "127.0.0.2"));
    for (let i = 0; i < 2; i++) {
      const extra = await rawConnection(server, "127.0.0.2");
      extra.socket.write(encodeRequest("v2", VALIDATE));
      await extra.closed;
      assert.equal(extra.replies().length, 0);
    }
    assert.equal(server.stats().perAddressRejected, 2);
    const refusals = logger.warnings.filter((w) => w.fields?.reason === "maxConnectionsPerAddress reached");
    assert.equal(refusals.length, 1, "one line per address and minute");
    assert.equal(refusals[0]!.fields?.address, "127.0.0.2");
    // The three admitted ones still answer; another address (rdzv's client, from 127.0.0.1) is served.
    for (const c of open) {
      const before = c.replies().length;
      c.socket.write(encodeRequest("v2", { type: "ping", nonce: 5 }));
      await waitFor("a PING reply", () => c.replies().length >= before + 4);
    }
    const store = await fx.client(server);
    assert.equal(await store.add("n", 1), 1);
    // One closed: its slot is free again.
    open[0]!.socket.destroy();
    await waitFor("the close seen", () => server.stats().connections === 3);
    await pinged(server, "127.0.0.2");
    assert.equal(server.stats().perAddressRejected, 2);
  });

  it("does not count loopback clients by default: a single-host job opens many", async () => {
    const server = await fx.server({ limits: { maxConnectionsPerAddress: 2 } });
    for (let i = 0; i < 6; i++) await pinged(server, i % 2 === 0 ? "127.0.0.1" : "127.0.0.2");
    const stores = await Promise.all([fx.client(server), fx.client(server), fx.client(server)]);
    for (const s of stores) await s.add("n", 1);
    assert.equal(server.stats().perAddressRejected, 0);
  });
});
