/**
 * Shared-secret authentication (rdzv's AUTH extension) and TLS, with rdzv's client and raw sockets. The
 * TLS certificate is self-signed, made by `openssl` for each run (test/helpers/tls-cert.ts).
 */

import assert from "node:assert/strict";
import { once } from "node:events";
import { connect, type Socket } from "node:net";
import { after, afterEach, before, describe, it } from "node:test";
import { HOST, TcpFixtures } from "../../../test/helpers/tcp-fixtures.js";
import { makeTestCertificate, type TestCertificate } from "../../../test/helpers/tls-cert.js";
import { waitFor } from "../../../test/helpers/wait-for.js";
import { ErrorCode } from "../../errors.js";
import { connectTCPStore, type TCPStoreOptions } from "./client.js";
import { encodeRequest } from "./encode.js";
import { AUTH_PROBE_KEY, type Request, VALIDATION_MAGIC } from "./protocol.js";
import { createTCPStoreServer, type TCPStoreServer, type TCPStoreServerOptions } from "./server.js";

const TOKEN = "correct horse battery staple";
const fx = new TcpFixtures();
afterEach(() => fx.cleanup());
const start = (options: TCPStoreServerOptions) => fx.server(options);
const client = (server: TCPStoreServer, options: Partial<TCPStoreOptions> = {}) => fx.client(server, options);

const hasCode = (code: string, pattern?: RegExp) => (err: unknown) => {
  const e = err as Error & { code?: string };
  assert.equal(e.code, code, e.message);
  if (pattern !== undefined) assert.match(e.message, pattern);
  return true;
};

/** A raw socket that sends `reqs` (v2) and resolves with everything it read until the server closed it. */
async function rawSession(server: TCPStoreServer, dialect: "v1" | "v2", reqs: Request[]): Promise<Buffer> {
  const socket: Socket = connect({ host: HOST, port: server.port });
  socket.on("error", () => {});
  fx.defer(() => socket.destroy());
  const chunks: Buffer[] = [];
  socket.on("data", (c: Buffer) => chunks.push(c));
  const closed = once(socket, "close");
  await once(socket, "connect");
  socket.write(Buffer.concat(reqs.map((r) => encodeRequest(dialect, r))));
  await closed;
  return Buffer.concat(chunks);
}

const VALIDATE: Request = { type: "validate", magic: VALIDATION_MAGIC };

describe("TCPStore authentication (shared secret)", () => {
  it("serves a client with the token: plain calls, blocking calls on wait connections, clones", async () => {
    const server = await start({ authToken: TOKEN });
    assert.equal(server.requiresAuth, true);
    const a = await client(server, { authToken: TOKEN });
    const b = await client(server, { authToken: TOKEN });
    const pending = a.get("k");
    await b.set("k", "v");
    assert.equal(Buffer.from(await pending).toString(), "v");
    const clone = await a.clone();
    fx.defer(() => clone.close());
    assert.equal(await clone.add("n", 2), 2);
    assert.equal(server.stats().authFailures, 0);
  });

  it("refuses a client without a token at once, saying so (RDZV_AUTH, no retrying)", async () => {
    const server = await start({ authToken: TOKEN });
    // connectTimeoutMs is long: a retried failure would time the test out.
    await assert.rejects(
      connectTCPStore({ host: HOST, port: server.port, timeoutMs: 60_000 }),
      hasCode(ErrorCode.Auth, /requires authentication.*RDZV_AUTH_TOKEN/),
    );
  });

  it("refuses a wrong token (RDZV_AUTH), counts it and closes that connection only", async () => {
    const server = await start({ authToken: TOKEN });
    const good = await client(server, { authToken: TOKEN });
    await assert.rejects(
      connectTCPStore({ host: HOST, port: server.port, timeoutMs: 60_000, authToken: "guess" }),
      hasCode(ErrorCode.Auth, /rejected the auth token/),
    );
    assert.equal(server.stats().authFailures, 1);
    assert.equal(await good.add("still", 1), 1);
  });

  it("takes the token from RDZV_AUTH_TOKEN", async () => {
    const server = await start({ authToken: TOKEN });
    fx.env("RDZV_AUTH_TOKEN", TOKEN);
    const store = await client(server);
    assert.equal(await store.add("env", 1), 1);
  });

  it("closes unauthenticated connections at their first real request; only the handshake and probes pass", async () => {
    const server = await start({ authToken: TOKEN });
    const v2 = await rawSession(server, "v2", [
      VALIDATE,
      { type: "ping", nonce: 7 },
      { type: "check", keys: [AUTH_PROBE_KEY] },
      { type: "set", key: "/sneaky", value: Buffer.from("x") },
      { type: "get", key: "/sneaky" },
    ]);
    // PING echoes 7, the auth probe reads "present" (00), then the SET closes the connection.
    assert.deepEqual(v2, Buffer.from([7, 0, 0, 0, 0]));
    const v1 = await rawSession(server, "v1", [{ type: "set", key: "/sneaky", value: Buffer.from("x") }]);
    assert.equal(v1.length, 0);
    assert.equal(server.engine.get("/sneaky"), undefined);
    assert.equal(server.stats().protocolErrors, 2);
  });

  it("closes an unauthenticated connection once it sends more than an AUTH could need, before buffering the rest", {
    timeout: 10_000,
  }, async () => {
    // Without the bound, a 1 MiB value (64 MiB by default) was buffered in full before its SET was refused,
    // by every connection, before any token was checked; with no timeout, held until the connection closed.
    const server = await start({ authToken: TOKEN, timeouts: { incompleteRequestMs: 0 } });
    const errors: string[] = [];
    server.on("protocolError", (e) => errors.push(e.reason));
    const socket = connect({ host: HOST, port: server.port });
    socket.on("error", () => {});
    fx.defer(() => socket.destroy());
    await once(socket, "connect");
    const closed = once(socket, "close");
    const set = encodeRequest("v2", { type: "set", key: "/big", value: Buffer.alloc(1 << 20) });
    // All but the last byte: the SET is never complete, so only the byte bound can close the connection.
    socket.write(Buffer.concat([encodeRequest("v2", VALIDATE), set.subarray(0, set.length - 1)]));
    await closed;
    assert.equal(errors.length, 1);
    assert.match(errors[0]!, /before authenticating/);
    assert.equal(server.stats().protocolErrors, 1);
  });

  it("still takes an AUTH pipelined with a large request behind it", async () => {
    const server = await start({ authToken: TOKEN });
    const socket = connect({ host: HOST, port: server.port });
    socket.on("error", () => {});
    fx.defer(() => socket.destroy());
    await once(socket, "connect");
    const replies: Buffer[] = [];
    socket.on("data", (c: Buffer) => replies.push(c));
    socket.write(
      Buffer.concat(
        [
          VALIDATE,
          { type: "auth", token: Buffer.from(TOKEN) } as Request,
          { type: "set", key: "/big", value: Buffer.alloc(1 << 20, 7) } as Request,
          { type: "getNumKeys" } as Request,
        ].map((r) => encodeRequest("v2", r)),
      ),
    );
    await waitFor("the AUTH and GETNUMKEYS replies", () => Buffer.concat(replies).length >= 9);
    // AUTH accepted (00), then GETNUMKEYS: one key.
    assert.deepEqual(Buffer.concat(replies), Buffer.from([0, 1, 0, 0, 0, 0, 0, 0, 0]));
    assert.equal(server.engine.get("/big")?.length, 1 << 20);
  });

  it("closes a connection that does not authenticate within the incomplete-request timeout", {
    timeout: 10_000,
  }, async () => {
    // It sends only complete requests (VALIDATE, PING), so it holds nothing incomplete, and the idle
    // timeout is off: before, such a connection held its slot (of maxConnections) for ever.
    const server = await start({ authToken: TOKEN, timeouts: { incompleteRequestMs: 300 } });
    const good = await client(server, { authToken: TOKEN });
    const closed = rawSession(server, "v2", [VALIDATE, { type: "ping", nonce: 1 }]);
    assert.deepEqual(await closed, Buffer.from([1, 0, 0, 0]));
    assert.equal(server.stats().reaped, 1);
    // An authenticated connection that goes quiet is not touched.
    await new Promise((resolve) => setTimeout(resolve, 800));
    assert.equal(await good.add("n", 1), 1);
    assert.equal(server.stats().reaped, 1);
  });

  it("a client with a token works against a server without auth; a server without auth reports no auth", async () => {
    const server = await start({});
    assert.equal(server.requiresAuth, false);
    const store = await client(server, { authToken: TOKEN });
    assert.equal(await store.add("n", 1), 1);
    const probe = await rawSession(server, "v2", [
      VALIDATE,
      { type: "check", keys: [AUTH_PROBE_KEY] },
      VALIDATE, // a second VALIDATE is bad input: it ends the session
    ]);
    assert.deepEqual(probe, Buffer.from([1]), "auth probe: absent");
  });

  it("validates tokens eagerly", async () => {
    await assert.rejects(
      createTCPStoreServer({ port: 0, authToken: "" }),
      hasCode(ErrorCode.InvalidArgument),
    );
    await assert.rejects(
      connectTCPStore({ host: HOST, port: 1, authToken: TOKEN, dialect: "v1" }),
      hasCode(ErrorCode.InvalidArgument, /v2/),
    );
  });
});

describe("TCPStore over TLS", () => {
  let pem: TestCertificate;
  let cert: Buffer;
  let key: Buffer;

  before(() => {
    pem = makeTestCertificate();
    ({ cert, key } = pem);
  });
  after(() => pem?.remove());

  it("serves a client that trusts the certificate, with auth, blocking calls included", async () => {
    const server = await start({ tls: { cert, key }, authToken: TOKEN });
    assert.equal(server.tls, true);
    const a = await client(server, { tls: { ca: cert }, authToken: TOKEN });
    const b = await client(server, { tls: { ca: cert }, authToken: TOKEN });
    const pending = a.get("secret");
    await b.set("secret", "over tls");
    assert.equal(Buffer.from(await pending).toString(), "over tls");
    assert.equal(a.hasExtensions, true);
  });

  it("takes the CA from RDZV_TLS_CA", async () => {
    const server = await start({ tls: { cert, key } });
    fx.env("RDZV_TLS_CA", pem.certPath);
    const store = await client(server);
    assert.equal(await store.add("n", 1), 1);
  });

  it("refuses a certificate the client does not trust at once (RDZV_AUTH)", async () => {
    const server = await start({ tls: { cert, key } });
    await assert.rejects(
      connectTCPStore({ host: HOST, port: server.port, timeoutMs: 60_000, tls: true }),
      hasCode(ErrorCode.Auth, /certificate/),
    );
  });

  it("a plain client cannot talk to a TLS server, nor a TLS client to a plain one (RDZV_CONNECTION)", async () => {
    const tlsServer = await start({ tls: { cert, key } });
    const plainServer = await start({});
    const opts = { host: HOST, timeoutMs: 1000, connectTimeoutMs: 1000 };
    // Each says that TLS may be the cause (they blamed request limits and the protocol version).
    await assert.rejects(
      connectTCPStore({ ...opts, port: tlsServer.port }),
      hasCode(
        ErrorCode.Connection,
        /without answering the handshake, as these do: a server that speaks TLS .*RDZV_TLS_CA/,
      ),
    );
    await assert.rejects(
      connectTCPStore({ ...opts, port: tlsServer.port, authToken: TOKEN }),
      hasCode(ErrorCode.Connection, /speaks TLS .*only rdzv servers take one/),
    );
    await assert.rejects(
      connectTCPStore({ ...opts, port: plainServer.port, tls: { ca: cert } }),
      hasCode(ErrorCode.Connection, /in the TLS handshake: this client speaks TLS/),
    );
  });

  it("closes a TCP connection that never completes its TLS handshake", { timeout: 20_000 }, async () => {
    const server = await start({ tls: { cert, key }, timeouts: { incompleteRequestMs: 300 } });
    const socket = connect({ host: HOST, port: server.port });
    socket.on("error", () => {});
    fx.defer(() => socket.destroy());
    await once(socket, "close");
  });

  it("rejects TLS options without a key", async () => {
    await assert.rejects(
      createTCPStoreServer({ port: 0, tls: { cert } }),
      hasCode(ErrorCode.InvalidArgument),
    );
  });
});
