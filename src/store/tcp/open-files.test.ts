/**
 * The open-file limit (open-files.ts): parsing /proc's limits, the advice `rdzv serve` gives at start, and
 * the warning as connections come close, in a server here and in a real `rdzv serve` under `ulimit -n`.
 */

import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { afterEach, describe, it } from "node:test";
import { recordingLogger } from "../../../test/helpers/recording-logger.js";
import { startServe } from "../../../test/helpers/serve-process.js";
import { HOST, TcpFixtures } from "../../../test/helpers/tcp-fixtures.js";
import { waitFor } from "../../../test/helpers/wait-for.js";
import { openFileAdvice, parseOpenFileLimit, readOpenFileRoom, warnAtConnections } from "./open-files.js";

const fx = new TcpFixtures();
afterEach(() => fx.cleanup());

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max processes             96369                96369                processes
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
`;

/** Opens `n` raw connections to `port`; closed with the test. */
async function open(port: number, n: number): Promise<Socket[]> {
  const sockets: Socket[] = [];
  for (let i = 0; i < n; i++) {
    const s = connect({ host: HOST, port });
    s.on("error", () => {});
    fx.defer(() => s.destroy());
    await new Promise((resolve) => s.once("connect", resolve));
    sockets.push(s);
  }
  return sockets;
}

describe("open-file limit", () => {
  it("parses the Max open files line of /proc/PID/limits, unlimited included", () => {
    assert.deepEqual(parseOpenFileLimit(LIMITS), { soft: 1024, hard: 524288 });
    assert.deepEqual(
      parseOpenFileLimit("Max open files            unlimited            unlimited            files\n"),
      { soft: Number.POSITIVE_INFINITY, hard: Number.POSITIVE_INFINITY },
    );
    assert.equal(parseOpenFileLimit("Max processes 10 10 processes\n"), undefined);
    assert.equal(parseOpenFileLimit(""), undefined);
    // This process's (Linux): a finite soft limit above what it holds.
    const room = readOpenFileRoom();
    assert.ok(room !== undefined && room.limit > room.inUse && room.inUse > 0, JSON.stringify(room));
  });

  it("warns 5 % (at least 16) short of the room the limit leaves", () => {
    assert.equal(warnAtConnections({ limit: 1024, inUse: 24 }), 1000 - 50);
    assert.equal(warnAtConnections({ limit: 100, inUse: 80 }), 4);
    assert.equal(warnAtConnections({ limit: 64, inUse: 60 }), 1);
  });

  it("advises rdzv serve when the limit is below --max-connections, with the ulimit that fits", () => {
    assert.equal(openFileAdvice({ soft: 20_000, hard: 20_000 }, 30, 16_384), undefined);
    const raise = openFileAdvice({ soft: 1024, hard: 524_288 }, 24, 16_384);
    assert.match(
      raise!,
      /^the open-file limit \(1024, 24 in use at the start\) leaves room for about 1000 connections, fewer than --max-connections \(16384\); past it, new connections are closed before the server sees them, with no line in this log\./,
    );
    assert.match(
      raise!,
      /To serve them all: ulimit -n 16496 before starting \(the hard limit allows it\), or LimitNOFILE=16496 in a systemd unit; or lower --max-connections to what fits$/,
    );
    const hard = openFileAdvice({ soft: 1024, hard: 4096 }, 24, 16_384);
    assert.match(
      hard!,
      /ulimit -n 4096 is the most this user may set \(the hard limit\); beyond it, raise the hard limit \(as root/,
    );
  });

  it("a server warns once a minute as its connections come close to the limit", async () => {
    const logger = recordingLogger();
    const server = await fx.server({ logger, openFiles: { limit: 100, inUse: 80 } });
    const near = () =>
      logger.warnings.filter((w) => /close to the process's open-file limit/.test(w.message));
    await open(server.port, 3);
    await waitFor("3 connections", () => server.stats().connections === 3);
    assert.equal(near().length, 0);
    await open(server.port, 3);
    await waitFor("6 connections", () => server.stats().connections === 6);
    assert.deepEqual(
      near().map((w) => w.fields),
      [{ connections: 4, openFileLimit: 100, inUseAtStart: 80, maxConnections: 16384, unlogged: 0 }],
    );
    // Not watched when told so.
    const quiet = recordingLogger();
    const unwatched = await fx.server({ logger: quiet, openFiles: false });
    await open(unwatched.port, 6);
    await waitFor("6 connections", () => unwatched.stats().connections === 6);
    assert.equal(quiet.warnings.length, 0);
  });

  it("rdzv serve under ulimit -n 64 says so at start, and again as connections come close", async () => {
    await using serve = await startServe([], { openFileLimit: 64 });
    const start =
      /WARN rdzv store: the open-file limit \(64, \d+ in use at the start\) leaves room for about \d+ connections, fewer than --max-connections \(16384\)/;
    await waitFor("the warning at start", () => start.test(serve.output()));
    // Before: connections past the limit were closed without a word in the server's log.
    const sockets = await open(serve.port, 60);
    await waitFor("the near-limit warning", () =>
      /WARN TCPStore server: connections are close to the process's open-file limit/.test(serve.output()),
    );
    assert.equal(sockets.length, 60);
  });
});
