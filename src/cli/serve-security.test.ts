/** `rdzv serve` security options: parsing, and a real `rdzv serve` process with TLS and a token. */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { startServe } from "../../test/helpers/serve-process.js";
import { makeTestCertificate, type TestCertificate } from "../../test/helpers/tls-cert.js";
import { ErrorCode } from "../errors.js";
import { silentLogger } from "../log.js";
import { connectTCPStore } from "../store/tcp/client.js";
import { securityOptions } from "./serve-security.js";

const MAIN = fileURLToPath(new URL("./main.js", import.meta.url));

describe("rdzv serve security options", () => {
  let pem: TestCertificate;
  let tokenFile: string;

  before(() => {
    pem = makeTestCertificate();
    tokenFile = join(pem.certPath, "..", "token");
    writeFileSync(tokenFile, "s3cret-token\n");
  });
  after(() => pem?.remove());

  it("reads the token file (trimmed) and the TLS files; defaults the timeouts", () => {
    const out = securityOptions(
      { "auth-token-file": tokenFile, "tls-cert": pem.certPath, "tls-key": pem.keyPath },
      {},
    );
    assert.equal(out.authToken, "s3cret-token");
    assert.equal(out.tls?.cert, pem.cert.toString());
    assert.deepEqual(out.timeouts, { incompleteRequestMs: 30_000, idleMs: 0 });
  });

  it("--max-auth-failures: 10 by default, 0 turns the throttle off, anything else is a usage error", () => {
    assert.deepEqual(securityOptions({}, {}).authThrottle, { maxFailures: 10 });
    assert.deepEqual(securityOptions({ "max-auth-failures": "0" }, {}).authThrottle, { maxFailures: 0 });
    assert.throws(
      () => securityOptions({ "max-auth-failures": "-1" }, {}),
      /--max-auth-failures must be an integer in 0\.\.1000000, got "-1"/,
    );
  });

  it("falls back to RDZV_AUTH_TOKEN, and has no token without either", () => {
    assert.equal(securityOptions({}, { RDZV_AUTH_TOKEN: "from-env" }).authToken, "from-env");
    assert.equal(securityOptions({}, {}).authToken, undefined);
    assert.equal(securityOptions({}, {}).tls, undefined);
  });

  it("warns when the token file or the TLS key is open to other users, and not when private", () => {
    const warned = (values: Parameters<typeof securityOptions>[0]): string[] => {
      const warnings: string[] = [];
      const logger = { ...silentLogger, warn: (m: string) => void warnings.push(m) };
      securityOptions(values, {}, logger);
      return warnings;
    };
    const values = { "auth-token-file": tokenFile, "tls-cert": pem.certPath, "tls-key": pem.keyPath };
    try {
      chmodSync(tokenFile, 0o600);
      chmodSync(pem.keyPath, 0o600);
      assert.deepEqual(warned(values), []);
      chmodSync(tokenFile, 0o644);
      chmodSync(pem.keyPath, 0o640);
      const warnings = warned(values);
      assert.equal(warnings.length, 2, warnings.join("\n"));
      assert.match(warnings[0]!, /auth token file .*token is open to other users \(mode 644\).*chmod 600/);
      assert.match(warnings[1]!, /TLS key file .* is open to other users \(mode 640\)/);
    } finally {
      chmodSync(tokenFile, 0o600);
      chmodSync(pem.keyPath, 0o600);
    }
  });

  it("names the file and what is wrong with it for unusable TLS files", () => {
    const other = makeTestCertificate();
    const garbage = join(pem.certPath, "..", "garbage.pem");
    writeFileSync(garbage, "not a PEM\n");
    const tls = (cert: string, key: string) => () =>
      securityOptions({ "tls-cert": cert, "tls-key": key }, {});
    try {
      // Before: "bad TLS options: error:0480006C:PEM routines::no start line", naming no file.
      assert.throws(tls(garbage, pem.keyPath), new RegExp(`--tls-cert ${garbage} holds no PEM certificate`));
      assert.throws(tls(pem.keyPath, pem.certPath), /--tls-cert .*key\.pem holds no PEM certificate/);
      assert.throws(tls(pem.certPath, garbage), /--tls-key .*garbage\.pem holds no usable PEM private key/);
      assert.throws(
        tls(pem.certPath, other.keyPath),
        /--tls-key .* does not go with the certificate in --tls-cert/,
      );
      assert.throws(
        tls(join(pem.certPath, "..", "missing.pem"), pem.keyPath),
        /--tls-cert .*missing\.pem cannot be read: ENOENT/,
      );
    } finally {
      other.remove();
    }
  });

  it("rejects a lone --tls-cert, a missing file, an empty token file and bad timeouts", () => {
    const bad = [
      { "tls-cert": pem.certPath },
      { "auth-token-file": join(pem.certPath, "..", "missing") },
      { "idle-timeout-ms": "-5" },
      { "incomplete-request-timeout-ms": "soon" },
    ];
    for (const values of bad) {
      assert.throws(() => securityOptions(values, {}), { code: ErrorCode.InvalidArgument });
    }
    writeFileSync(tokenFile, "\n");
    assert.throws(() => securityOptions({ "auth-token-file": tokenFile }, {}), /empty/);
    writeFileSync(tokenFile, "s3cret-token\n");
  });

  it("a real rdzv serve with TLS and a token serves a client that has both", {
    timeout: 30_000,
  }, async () => {
    const args = ["serve", "--port", "0", "--auth-token-file", tokenFile].concat([
      "--tls-cert",
      pem.certPath,
      "--tls-key",
      pem.keyPath,
    ]);
    const child = spawn(process.execPath, [MAIN, ...args], { stdio: ["ignore", "pipe", "pipe"] });
    const exited = once(child, "exit");
    try {
      const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
      const first = String((await lines.next()).value);
      const port = Number(/:(\d+)$/.exec(first)?.[1]);
      assert.ok(port > 0, first);
      assert.match(String((await lines.next()).value), /TLS, auth token required/);
      const store = await connectTCPStore({
        host: "127.0.0.1",
        port,
        timeoutMs: 10_000,
        authToken: "s3cret-token",
        tls: { ca: pem.cert },
      });
      assert.equal(await store.add("n", 5), 5);
      await store.close();
    } finally {
      child.kill("SIGTERM");
      const [code] = await exited;
      assert.equal(code, 0);
    }
  });

  it("a dashboard beyond loopback of a store with a token requires that token; on loopback it does not", {
    timeout: 60_000,
  }, async () => {
    const dashboardUrl = async (output: () => string): Promise<string> => {
      for (let i = 0; i < 400; i++) {
        const m = /rdzv dashboard on (http:\S+)/.exec(output());
        if (m !== null) return m[1]!;
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      throw new Error(`no dashboard URL in ${output()}`);
    };
    const env = { RDZV_AUTH_TOKEN: "s3cret-token" };
    {
      await using exposed = await startServe(["--http-port", "0", "--http-host", "0.0.0.0"], { env });
      const url = await dashboardUrl(exposed.output);
      assert.equal((await fetch(`${url}api/runs`)).status, 401);
      const bearer = { headers: { authorization: "Bearer s3cret-token" } };
      assert.equal((await fetch(`${url}api/runs`, bearer)).status, 200);
      assert.match(exposed.output(), /requires the store's auth token/);
      assert.doesNotMatch(exposed.output(), /without authentication/);
    }
    await using local = await startServe(["--http-port", "0"], { env });
    assert.equal((await fetch(`${await dashboardUrl(local.output)}api/runs`)).status, 200);
  });

  it("warns when it serves other machines without a token, and only then", { timeout: 60_000 }, async () => {
    const printed = async (args: string[], env: NodeJS.ProcessEnv = {}): Promise<string> => {
      const serve = await startServe(["--host", "0.0.0.0", ...args], { env });
      const closed = once(serve.child, "close"); // its output read to the end
      assert.equal(await serve.kill("SIGTERM"), 0);
      await closed;
      return serve.output();
    };
    const open = await printed([], { RDZV_AUTH_TOKEN: "" });
    assert.match(open, /no auth token: any client that reaches this address can read, change and delete/);
    assert.match(open, /--auth-token-file/);
    assert.doesNotMatch(await printed(["--auth-token-file", tokenFile]), /no auth token/);
    assert.doesNotMatch(await printed([], { RDZV_AUTH_TOKEN: "s3cret-token" }), /no auth token/);
    const serve = await startServe(["--host", "127.0.0.1"], { env: { RDZV_AUTH_TOKEN: "" } });
    const closed = once(serve.child, "close");
    await serve.kill("SIGTERM");
    await closed;
    assert.doesNotMatch(serve.output(), /no auth token/);
  });
});
