import assert from "node:assert/strict";
import { once } from "node:events";
import { request } from "node:http";
import { connect, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import { type HttpServer, hostHeaderAllowed, startHttpServer } from "./http-server.js";

const servers: HttpServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await s.close();
});

type StartOptions = {
  host?: string;
  allowedHosts?: string[];
  maxConnections?: number;
  headersTimeoutMs?: number;
};

async function start(options: StartOptions = {}): Promise<HttpServer> {
  const server = await startHttpServer({
    ...options,
    port: 0,
    fetch: async () => new Response("secret runs", { headers: { "content-type": "text/plain" } }),
  });
  servers.push(server);
  return server;
}

/** GET / with the given Host header (fetch cannot set one): status and body. */
function getWithHost(server: HttpServer, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port: server.port, path: "/", headers: { host } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (c: string) => {
        body += c;
      });
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("dashboard Host header (DNS rebinding)", () => {
  it("on loopback, serves IP literals and localhost, and refuses other names", async () => {
    const server = await start();
    for (const host of [`127.0.0.1:${server.port}`, `localhost:${server.port}`, "localhost", "[::1]:80"]) {
      assert.equal((await getWithHost(server, host)).status, 200, host);
    }
    // A page of evil.example whose name now resolves to 127.0.0.1 must not read the runs.
    const rebound = await getWithHost(server, `evil.example:${server.port}`);
    assert.equal(rebound.status, 403);
    assert.doesNotMatch(rebound.body, /secret runs/);
    const { error } = JSON.parse(rebound.body) as { error: string };
    assert.match(error, /"evil.example:\d+" is not an address of this dashboard.*--http-allowed-host/);
  });

  it("serves names given in allowedHosts, and enforces them on any bind address then", async () => {
    const server = await start({ host: "0.0.0.0", allowedHosts: ["Dash.Example"] });
    assert.equal((await getWithHost(server, "dash.example:8080")).status, 200);
    assert.equal((await getWithHost(server, "10.1.2.3")).status, 200);
    assert.equal((await getWithHost(server, "evil.example")).status, 403);
    // Without allowedHosts, a wildcard bind cannot know its names: every Host is served.
    const open = await start({ host: "0.0.0.0" });
    assert.equal((await getWithHost(open, "any.example")).status, 200);
  });

  it("hostHeaderAllowed parses ports and brackets, and refuses malformed headers", () => {
    assert.equal(hostHeaderAllowed(undefined), true);
    assert.equal(hostHeaderAllowed("LOCALHOST:1"), true);
    assert.equal(hostHeaderAllowed("app.localhost"), true);
    assert.equal(hostHeaderAllowed("localhost."), true);
    assert.equal(hostHeaderAllowed("[fe80::1]"), true);
    assert.equal(hostHeaderAllowed("localhost.evil.example"), false);
    assert.equal(hostHeaderAllowed("127.0.0.1.evil.example"), false);
    assert.equal(hostHeaderAllowed("localhost:80@evil"), false);
    assert.equal(hostHeaderAllowed("[::1]x"), false);
    assert.equal(hostHeaderAllowed(""), false);
    assert.equal(hostHeaderAllowed("x.example", ["x.example"]), true);
  });
});

describe("dashboard connection limits", () => {
  const sockets: Socket[] = [];
  afterEach(() => {
    for (const s of sockets.splice(0)) s.destroy();
  });
  const open = async (server: HttpServer): Promise<Socket> => {
    const socket = connect({ host: "127.0.0.1", port: server.port });
    socket.on("error", () => {});
    sockets.push(socket);
    await once(socket, "connect");
    return socket;
  };

  it("closes connections past maxConnections at once, and serves again once one closes", {
    timeout: 10_000,
  }, async () => {
    const server = await start({ maxConnections: 2 });
    const a = await open(server);
    await open(server);
    const third = await open(server);
    await once(third, "close");
    a.destroy();
    for (;;) {
      const res = await fetch(server.url).catch(() => undefined);
      if (res?.status === 200) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  });

  it("closes a connection that trickles its headers (slow-loris) after headersTimeoutMs", {
    timeout: 10_000,
  }, async () => {
    // Before: Node's defaults, 60 s checked every 30 s, while connections had no cap.
    const server = await start({ headersTimeoutMs: 300 });
    const slow = await open(server);
    slow.write("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    const received: Buffer[] = [];
    slow.on("data", (c: Buffer) => received.push(c));
    await once(slow, "close");
    assert.match(Buffer.concat(received).toString(), /^HTTP\/1.1 408/);
  });

  it("refuses limits that are not positive integers", async () => {
    const fetch = async () => new Response("");
    await assert.rejects(startHttpServer({ port: 0, maxConnections: 0, fetch }), /maxConnections must be/);
    await assert.rejects(
      startHttpServer({ port: 0, headersTimeoutMs: 1.5, fetch }),
      /headersTimeoutMs must be/,
    );
  });
});
