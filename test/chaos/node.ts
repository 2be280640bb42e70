/**
 * One node of the chaos soak (test/chaos.test.ts), a process of its own. It acts as an elastic agent
 * would, forever: `nextRendezvous()`; publish its id under `member/<rank>` in the round's store and read
 * everyone's (the membership it believes in); wait until the round ends; again. It prints one JSON line
 * per event on stdout (pipes are written synchronously on Linux, so a SIGKILL loses nothing printed):
 *
 *   {"ev":"start","id":I,"pid":P,"t":T}
 *   {"ev":"joining","id":I,"t":T}                         about to call nextRendezvous()
 *   {"ev":"completed","id":I,"round":R,"rank":K,"worldSize":W,"t":T}
 *   {"ev":"members","id":I,"round":R,"members":[ids by rank],"t":T}
 *   {"ev":"ended","id":I,"round":R,"t":T}                  waitForRoundEnd() said the round is over
 *   {"ev":"error","id":I,"code":C,"message":M,"t":T}       nextRendezvous() failed; it retries
 *   {"ev":"stall","id":I,"from":F,"t":T}                   its event loop ran nothing from F to T (the
 *                                                          machine starved it): as hung as a SIGSTOP
 *   {"ev":"log","id":I,"level":L,"message":M,"t":T}        the handler's own log (every level, fields in
 *                                                          the message): read only into a failure's timeline
 *
 * Environment: CHAOS_ID (this incarnation's unique id), CHAOS_PARAMS (JSON `RendezvousParameters`).
 */

import type { RendezvousInfo, RendezvousParameters } from "../../src/index.js";
import type { Logger } from "../../src/log.js";
import type { DynamicRendezvousHandler } from "../../src/rendezvous/dynamic-handler.js";

const id = process.env.CHAOS_ID ?? "";
const params = JSON.parse(process.env.CHAOS_PARAMS ?? "{}") as RendezvousParameters;
const MEMBERS_TIMEOUT_MS = 30_000;
/** The event loop is sampled this often; a gap longer than `STALL_MS` beyond it is reported. */
const TICK_MS = 100;
const STALL_MS = 500;

function report(ev: string, fields: Record<string, unknown> = {}): void {
  process.stdout.write(`${JSON.stringify({ ev, id, ...fields, t: Date.now() })}\n`);
}

function describeError(err: unknown): { code: string; message: string } {
  const e = err as { code?: string; message?: string };
  return { code: e.code ?? "UNKNOWN", message: String(e.message ?? err).slice(0, 300) };
}

/** Publishes this node's id at its rank and reads every member's; undefined when aborted (round over). */
async function exchangeMembers(info: RendezvousInfo, signal: AbortSignal): Promise<string[] | undefined> {
  const keys = Array.from({ length: info.worldSize }, (_, k) => `member/${k}`);
  try {
    await info.store.set(`member/${info.rank}`, id, { signal });
    await info.store.wait(keys, { signal, timeoutMs: MEMBERS_TIMEOUT_MS });
    const values = await info.store.multiGet(keys, { signal });
    return values.map((v) => Buffer.from(v).toString("utf8"));
  } catch (err) {
    if (signal.aborted) return undefined;
    throw err;
  }
}

/**
 * Reports every stretch in which this process ran nothing (a starved process misses keep-alives just as
 * a stopped one does, and the others may rightly count it dead meanwhile).
 */
function watchStalls(): void {
  let last = Date.now();
  setInterval(() => {
    const now = Date.now();
    if (now - last > TICK_MS + STALL_MS) report("stall", { from: last });
    last = now;
  }, TICK_MS).unref();
}

/** The handler's log as `log` events: what a failing soak's timeline needs beside the reports. */
const log =
  (level: string) =>
  (message: string, fields?: Record<string, unknown>): void =>
    report("log", {
      level,
      message: fields === undefined ? message : `${message} ${JSON.stringify(fields)}`,
    });
const logger: Logger = { debug: log("debug"), info: log("info"), warn: log("warn"), error: log("error") };

/** The backend's own creator, which takes a logger (the registry's does not). */
async function createHandler(): Promise<DynamicRendezvousHandler> {
  switch (params.backend) {
    case "c10d":
      return (await import("../../src/backends/c10d.js")).createC10dRendezvousHandler(params, { logger });
    case "etcd":
      return (await import("../../src/backends/etcd.js")).createEtcdRendezvousHandler(params, { logger });
    case "redis":
      return (await import("../../src/backends/redis.js")).createRedisRendezvousHandler(params, { logger });
    default:
      throw new Error(`chaos node: no creator for backend ${params.backend}`);
  }
}

async function main(): Promise<void> {
  report("start", { pid: process.pid });
  watchStalls();
  const handler = await createHandler();
  for (;;) {
    report("joining");
    let info: RendezvousInfo;
    try {
      info = await handler.nextRendezvous();
    } catch (err) {
      report("error", describeError(err));
      await new Promise((resolve) => setTimeout(resolve, 500));
      continue;
    }
    report("completed", { round: info.round, rank: info.rank, worldSize: info.worldSize });
    const roundOver = new AbortController();
    const exchanged = exchangeMembers(info, roundOver.signal).then(
      (members) => {
        if (members !== undefined) report("members", { round: info.round, members });
      },
      (err: unknown) => report("error", { round: info.round, ...describeError(err) }),
    );
    for (;;) {
      try {
        if (await handler.waitForRoundEnd({ timeoutMs: 1000 })) break;
      } catch (err) {
        report("error", { round: info.round, ...describeError(err) });
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
    roundOver.abort();
    await exchanged;
    report("ended", { round: info.round });
  }
}

main().catch((err: unknown) => {
  report("error", { fatal: true, ...describeError(err) });
  process.exit(1);
});
