/**
 * `rdzv status` (the compiled CLI) against real stores: a rendezvous of node processes formed in the test,
 * PyTorch's own handler's pickled state, and `rdzv serve --http-port`'s API.
 */

import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { promisify } from "node:util";
import { createRendezvousHandler } from "../src/index.js";
import type { RunView } from "../src/server/run-view.js";
import { connectTCPStore } from "../src/store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../src/store/tcp/server.js";
import { type NodeProc, startNodes } from "./helpers/rdzv-node-procs.js";
import { RDZV_MAIN, startServe } from "./helpers/serve-process.js";
import { makeTestCertificate } from "./helpers/tls-cert.js";
import { findTorch1, findTorch2, runDriver, startTorchServer } from "./helpers/torch.js";

const run = promisify(execFile);

/** Runs `rdzv status ARGS`; resolves with exit code and output (never rejects on a non-zero exit). */
async function status(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [RDZV_MAIN, "status", ...args], {
      timeout: 60_000,
      maxBuffer: 64 * 1024 * 1024,
      env,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

interface StatusJson {
  endpoint: string;
  now: number;
  runs: RunView[];
}

describe("rdzv status", () => {
  let server: TCPStoreServer;
  let endpoint: string;
  let nodes: NodeProc[] = [];
  before(async () => {
    server = await createTCPStoreServer({ port: 0 });
    endpoint = `127.0.0.1:${server.port}`;
  });
  after(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    await server?.close();
  });

  it("--json shows a rendezvous formed here: its round, state and each node's rank, pid and address", async () => {
    nodes = startNodes(3, endpoint, "job", 2, 3);
    const done = await Promise.all(
      nodes.map((n) => n.waitFor((e) => e.event === "completed" && e.round === 0)),
    );
    const rankByPid = new Map(done.map((e) => [e.pid as number, e.rank as number]));
    const { code, stdout } = await status(["--endpoint", endpoint, "--json"]);
    assert.equal(code, 0);
    const doc = JSON.parse(stdout) as StatusJson;
    assert.equal(doc.endpoint, endpoint);
    assert.equal(doc.runs.length, 1);
    const [view] = doc.runs;
    assert.equal(view?.runId, "job");
    assert.equal(view?.source, "rdzv");
    assert.equal(view?.state, "complete");
    assert.equal(view?.round, 0);
    assert.deepEqual(view?.waiting, []);
    assert.equal(view?.participants.length, 3);
    for (const p of view?.participants ?? []) {
      assert.equal(p.rank, rankByPid.get(p.pid!), `rank of pid ${p.pid}`);
      assert.equal(p.addr, "127.0.0.1");
      assert.equal(p.status, "alive");
      assert.match(p.id, new RegExp(`^127\\.0\\.0\\.1_${p.pid}_\\d+$`));
      assert.ok((p.keepAlives ?? 0) >= 1);
    }
    const one = JSON.parse(
      (await status(["--endpoint", endpoint, "--json", "--run-id", "job"])).stdout,
    ) as StatusJson;
    assert.deepEqual(
      one.runs.map((r) => [r.runId, r.state, r.participants.map((p) => p.pid)]),
      doc.runs.map((r) => [r.runId, r.state, r.participants.map((p) => p.pid)]),
    );
  });

  it("prints a table by default, and exits 1 naming a run that is not there", async () => {
    const text = await status(["--endpoint", endpoint]);
    assert.equal(text.code, 0);
    assert.match(text.stdout, /^run job \(rdzv\) {2}complete {2}round 0 {2}3 participants/m);
    assert.match(text.stdout, /RANK\s+SLOT\s+NODE\s+ADDRESS\s+PID\s+STATUS\s+KEEP-ALIVE/);
    for (const n of nodes)
      assert.match(
        text.stdout,
        new RegExp(`127\\.0\\.0\\.1_${n.pid}_\\d+\\s+127\\.0\\.0\\.1\\s+${n.pid}\\s+alive`),
      );
    const missing = await status(["--endpoint", endpoint, "--run-id", "nope"]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no run "nope" at 127\.0\.0\.1:\d+/);
    assert.equal(missing.stdout, "", "no frame claiming the store holds no runs");
    const bad = await status(["--endpoint", "127.0.0.1:notaport"]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--endpoint: .*port/);
  });

  it("--watch --json refreshes with keep-alive ages from counters seen moving, until SIGINT (exit 130)", async () => {
    const child = spawn(process.execPath, [
      RDZV_MAIN,
      "status",
      "--endpoint",
      endpoint,
      "--json",
      "--watch",
      "--interval-ms",
      "400",
    ]);
    const docs: StatusJson[] = [];
    let pending = "";
    const enough = new Promise<void>((resolve) => {
      child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
        pending += chunk;
        for (let nl = pending.indexOf("\n"); nl >= 0; nl = pending.indexOf("\n")) {
          docs.push(JSON.parse(pending.slice(0, nl)) as StatusJson);
          pending = pending.slice(nl + 1);
        }
        const last = docs[docs.length - 1];
        if (
          last?.runs[0]?.participants.every(
            (p) => p.lastKeepAliveAt !== undefined && p.expiresAt !== undefined,
          )
        )
          resolve();
      });
    });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    await Promise.race([
      enough,
      exited.then(() => assert.fail(`status --watch exited early: ${JSON.stringify(docs)}`)),
    ]);
    assert.ok(docs.length >= 2);
    assert.equal(
      docs[0]?.runs[0]?.participants[0]?.lastKeepAliveAt,
      undefined,
      "one read sees counters only",
    );
    child.kill("SIGINT");
    assert.equal(await exited, 130);
  });

  it("shows PyTorch's own handler's state, read through the TCPStore client", async () => {
    const torch = await findTorch1();
    await runDriver(torch, "torch_rdzv_state.py", ["127.0.0.1", String(server.port), "samples", "pt"]);
    const doc = JSON.parse(
      (await status(["--endpoint", endpoint, "--json", "--run-id", "pt-complete"])).stdout,
    ) as StatusJson;
    assert.equal(doc.runs.length, 1);
    const [view] = doc.runs;
    assert.equal(view?.source, "pytorch");
    assert.equal(view?.state, "complete");
    assert.deepEqual(
      view?.participants.map((p) => [p.id, p.rank]),
      [
        ["node-b.example_202_1", 0],
        ["node-a.example_101_0", 1],
      ],
    );
    assert.deepEqual(
      view?.waiting.map((p) => p.id),
      ["10.0.0.3_303_2"],
    );
    const all = JSON.parse((await status(["--endpoint", endpoint, "--json"])).stdout) as StatusJson;
    assert.deepEqual(
      all.runs.map((r) => `${r.runId}/${r.source}/${r.state}`),
      [
        "job/rdzv/complete",
        "pt-closed/pytorch/closed",
        "pt-complete/pytorch/complete",
        "pt-joining/pytorch/last call",
      ],
    );
  });
});

describe("rdzv status over a store whose clients wrote hostile counters", () => {
  it("stops at 1000 runs and ~100,000 slots, and says so", async () => {
    const server = await createTCPStoreServer({ port: 0 });
    try {
      const set = (key: string, value: string) => server.engine.set(`/${key}`, Buffer.from(value));
      for (let i = 0; i < 1005; i++) set(`rdzv/run${String(i).padStart(4, "0")}/open`, "0");
      set("rdzv/run0000/r0/tickets", "1000000000");
      const at = ["--endpoint", `127.0.0.1:${server.port}`];
      // Before: every run, and 20,000 slots (60,000 keys) of each round a counter names.
      const text = await status(at);
      assert.equal(text.code, 0, text.stderr);
      assert.match(
        text.stdout,
        /^run run0000 \(rdzv\) {2}joining {2}round 0 {2}\d+ participants, capped: see the notes/m,
      );
      assert.match(text.stdout, /note: round 0: showing \d+ of 1000000000 tickets \(capped\)/);
      assert.match(text.stdout, /\nshowing 1000 of 1005 runs \(capped\): name one with --run-id\n$/);
      assert.doesNotMatch(text.stdout, /run run1000 /);
      const doc = JSON.parse((await status([...at, "--json"])).stdout) as StatusJson & {
        total: number;
        truncated: boolean;
      };
      assert.deepEqual([doc.runs.length, doc.total, doc.truncated], [1000, 1005, true]);
      assert.equal(doc.runs[0]?.capped, true);
      assert.ok((doc.runs[0]?.participants.length ?? 0) <= 20_000);
    } finally {
      await server.close();
    }
  });
});

describe("rdzv status with TLS against a plain server", () => {
  it("says the server must speak TLS too, not that it needs --dialect v1", async () => {
    const cert = makeTestCertificate();
    const server = await createTCPStoreServer({ port: 0 });
    try {
      const env = { ...process.env, RDZV_TLS_CA: cert.certPath };
      const r = await status(["--endpoint", `127.0.0.1:${server.port}`, "--timeout-ms", "5000"], env);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /TLS handshake: this client speaks TLS/);
      assert.doesNotMatch(r.stderr, /--dialect v1/);
    } finally {
      await server.close();
      cert.remove();
    }
  });
});

describe("rdzv status against PyTorch's own TCPStore server", () => {
  it("lists and shows the runs of PyTorch's handler there (2.x lists keys; 1.13 needs --run-id and v1)", async () => {
    for (const torch of [await findTorch2(), await findTorch1()]) {
      await using server = await startTorchServer(torch);
      await runDriver(torch, "torch_rdzv_state.py", ["127.0.0.1", String(server.port), "samples", "own"]);
      const at = ["--endpoint", `127.0.0.1:${server.port}`, "--json"];
      if (torch.major >= 2) {
        const doc = JSON.parse((await status(at)).stdout) as StatusJson;
        assert.deepEqual(
          doc.runs.map((r) => `${r.runId}/${r.state}`),
          ["own-closed/closed", "own-complete/complete", "own-joining/last call"],
        );
      } else {
        const v2 = await status(at);
        assert.equal(v2.code, 1);
        assert.match(v2.stderr, /did not answer as a TCPStore server with the v2 protocol: .*--dialect v1/);
        const listed = await status([...at, "--dialect", "v1"]);
        assert.equal(listed.code, 1);
        assert.match(listed.stderr, /cannot list its keys .*: name the run id/);
        const one = JSON.parse(
          (await status([...at, "--dialect", "v1", "--run-id", "own-complete"])).stdout,
        ) as StatusJson;
        assert.deepEqual(
          one.runs[0]?.participants.map((p) => p.rank),
          [0, 1],
        );
      }
    }
  });
});

describe("rdzv status --http", () => {
  it("reads rdzv serve's dashboard API, timeline included", async () => {
    await using serve = await startServe(["--http-port", "0"]);
    const url = await waitForUrl(serve.output);
    const nodes = startNodes(2, `127.0.0.1:${serve.port}`, "web", 2, 2);
    try {
      await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === "completed")));
      const { code, stdout } = await status(["--http", url]);
      assert.equal(code, 0, stdout);
      assert.match(stdout, /^run web \(rdzv\) {2}complete {2}round 0 {2}2 participants/m);
      assert.match(stdout, /timeline:\n(.*joined.*\n){2}.*completed world size 2/);
      const doc = JSON.parse((await status(["--http", url, "--json"])).stdout) as StatusJson & {
        timelines: Record<string, { type: string }[]>;
      };
      assert.deepEqual(
        doc.timelines.web?.map((e) => e.type),
        ["joined", "joined", "completed"],
      );
      assert.equal((await status(["--http", url, "--run-id", "nope"])).code, 1);
      // A run id past ASCII, as the client wrote it (the server's keys are its UTF-8 bytes).
      await using c = await connectTCPStore({ host: "127.0.0.1", port: serve.port });
      await c.add("rdzv/ünï/open", 0);
      const all = JSON.parse((await status(["--http", url, "--json"])).stdout) as StatusJson;
      assert.deepEqual(
        all.runs.map((r) => r.runId),
        ["web", "ünï"], // by UTF-16 code units, whatever the server's locale: "ü" (U+00FC) after "w"
      );
      const one = await status(["--http", url, "--run-id", "ünï"]);
      assert.equal(one.code, 0, one.stderr);
      assert.match(one.stdout, /^run ünï \(rdzv\)/m);
    } finally {
      await Promise.all(nodes.map((n) => n.kill()));
    }
  });
});

describe("rdzv status and the dashboard once old rounds' keys are deleted", () => {
  it("show the last round whole and the timeline of every round", async () => {
    await using serve = await startServe(["--http-port", "0"]);
    const url = await waitForUrl(serve.output);
    const endpoint = `127.0.0.1:${serve.port}`;
    const params = {
      backend: "c10d",
      endpoint,
      runId: "rounds",
      minNodes: 2,
      maxNodes: 2,
      localAddr: "127.0.0.1",
      config: { is_host: false, read_timeout: 10, keep_alive_interval: 1, last_call_timeout: 0.1 },
    };
    const handlers = [await createRendezvousHandler(params), await createRendezvousHandler(params)];
    await using c = await connectTCPStore({ host: "127.0.0.1", port: serve.port });
    const roundKeys = async (round: number) =>
      (await c.listKeys()).filter((k) => k.startsWith(`rdzv/rounds/r${round}/`));
    try {
      for (let r = 0; r < 6; r++) await Promise.all(handlers.map((h) => h.nextRendezvous()));
      for (let i = 0; i < 100 && (await roundKeys(3)).length > 1; i++) await delay(50);
      // The rounds the views read (the open round and the last decided) are whole; those before, cleaned.
      assert.deepEqual(await roundKeys(3), ["rdzv/rounds/r3/outcome"]);
      for (const args of [
        ["--endpoint", endpoint],
        ["--http", url],
      ]) {
        const { code, stdout } = await status([...args, "--json"]);
        assert.equal(code, 0, stdout);
        const [view] = (JSON.parse(stdout) as StatusJson).runs;
        assert.equal(view?.state, "complete", args[0]);
        assert.equal(view?.round, 5, args[0]);
        assert.deepEqual(view?.participants.map((p) => [p.rank, p.status]).sort(), [
          [0, "alive"],
          [1, "alive"],
        ]);
        const text = await status(args);
        assert.match(text.stdout, /^run rounds \(rdzv\) {2}complete {2}round 5 {2}2 participants/m, args[0]);
      }
      const doc = JSON.parse((await status(["--http", url, "--json"])).stdout) as {
        timelines: Record<string, { type: string; round: number }[]>;
      };
      const completed = doc.timelines.rounds?.filter((e) => e.type === "completed").map((e) => e.round);
      assert.deepEqual(completed, [0, 1, 2, 3, 4, 5]);
    } finally {
      await handlers[1]!.shutdown();
      await handlers[0]!.shutdown();
    }
  });
});

describe("rdzv status --http, dashboard with a token", () => {
  it("sends RDZV_AUTH_TOKEN as a Bearer token, and says what is missing when the dashboard refuses", async () => {
    // Beyond loopback, the dashboard of a store with a token requires it on every route but /healthz.
    await using serve = await startServe(
      ["--host", "0.0.0.0", "--http-port", "0", "--http-host", "0.0.0.0"],
      {
        env: { RDZV_AUTH_TOKEN: "s3cret-token" },
      },
    );
    const url = (await waitForUrl(serve.output)).replace(/\/\/[^/:]+:/, "//127.0.0.1:");
    const { RDZV_AUTH_TOKEN: _, ...without } = process.env;
    const none = await status(["--http", url], without);
    assert.equal(none.code, 1, none.stdout);
    assert.match(none.stderr, /requires the store's auth token \(401\): set RDZV_AUTH_TOKEN/);
    const wrong = await status(["--http", url], { ...without, RDZV_AUTH_TOKEN: "other" });
    assert.equal(wrong.code, 1, wrong.stdout);
    assert.match(wrong.stderr, /refused the token in RDZV_AUTH_TOKEN \(401\)/);
    const right = await status(["--http", url, "--json"], { ...without, RDZV_AUTH_TOKEN: "s3cret-token" });
    assert.equal(right.code, 0, right.stderr);
    assert.deepEqual((JSON.parse(right.stdout) as StatusJson).runs, []);
  });
});

async function waitForUrl(output: () => string): Promise<string> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const m = /rdzv dashboard on (http:\/\/\S+)/.exec(output());
    if (m !== null) return m[1]!;
    if (Date.now() > deadline) throw new Error(`no dashboard URL in:\n${output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `rdzv status ARGS` as a child process, its output as it comes, and how it exited. */
function spawnStatus(args: string[]) {
  const child = spawn(process.execPath, [RDZV_MAIN, "status", ...args]);
  const text = { stdout: "", stderr: "" };
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
    text.stdout += chunk;
  });
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => {
    text.stderr += chunk;
  });
  const exited = new Promise<{ code: number | null; at: number }>((resolve) =>
    child.on("exit", (code) => resolve({ code, at: Date.now() })),
  );
  const until = async (what: string, test: () => boolean, timeoutMs = 20_000): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!test()) {
      if (Date.now() > deadline) throw new Error(`no ${what} in ${JSON.stringify(text)}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  return { child, text, exited, until };
}

describe("rdzv status when the store is not there", () => {
  for (const [signal, code, json] of [
    ["SIGINT", 130, false],
    ["SIGTERM", 143, true],
  ] as const) {
    it(`--watch${json ? " --json" : ""} says the server does not answer, and ${signal} ends it at once (exit ${code})`, async () => {
      const server = await createTCPStoreServer({ port: 0 });
      const args = ["--endpoint", `127.0.0.1:${server.port}`, "--watch", "--interval-ms", "200"];
      const watch = spawnStatus(json ? [...args, "--json"] : args);
      try {
        await watch.until("a frame", () =>
          watch.text.stdout.includes(json ? '"runs":[]' : "no rendezvous runs"),
        );
        await server.close();
        // Its next read finds nothing there; the client keeps trying to reconnect.
        const notes = () => (json ? watch.text.stderr : watch.text.stdout);
        await watch.until("the stall note", () => /no answer from 127\.0\.0\.1:\d+ for 2 s/.test(notes()));
        if (json) assert.ok(watch.text.stdout.split("\n").every((l) => l === "" || JSON.parse(l)));
        const sent = Date.now();
        watch.child.kill(signal);
        const { code: exit, at } = await watch.exited;
        assert.equal(exit, code, JSON.stringify(watch.text));
        assert.ok(at - sent < 2000, `exited ${at - sent} ms after ${signal}`);
      } finally {
        watch.child.kill("SIGKILL");
        await server.close();
      }
    });
  }

  it("says at once that nothing listens on a port, and that an HTTP server is no rdzv dashboard", async () => {
    const gone = await createTCPStoreServer({ port: 0 });
    const port = gone.port;
    await gone.close();
    const t0 = Date.now();
    const refused = await status(["--endpoint", `127.0.0.1:${port}`]);
    assert.equal(refused.code, 1);
    assert.match(
      refused.stderr,
      new RegExp(`nothing listens on 127\\.0\\.0\\.1:${port} \\(connection refused\\)`),
    );
    assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
    assert.match((await status(["--http", `http://127.0.0.1:${port}`])).stderr, /nothing listens on/);

    const answers: Record<string, [number, string, string]> = {
      "/api/runs": [404, "text/html", "<h1>Not Found</h1>"],
    };
    const other = createServer((req, res) => {
      const [code, type, body] = answers[req.url ?? ""] ?? [200, "application/json", '{"ok":true}'];
      res.writeHead(code, { "content-type": type }).end(body);
    });
    await new Promise<void>((resolve) => other.listen(0, "127.0.0.1", resolve));
    try {
      const url = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
      const html = await status(["--http", url]);
      assert.equal(html.code, 1);
      assert.match(html.stderr, /is not an rdzv dashboard .*answered 404 text\/html/);
      assert.doesNotMatch(html.stderr, /Cannot read properties/);
      answers["/api/runs"] = [200, "application/json", '{"items":[]}'];
      assert.match((await status(["--http", url])).stderr, /is not an rdzv dashboard .*no list of runs/);
      assert.match((await status(["--http", url, "--run-id", "x"])).stderr, /is not an rdzv dashboard/);
    } finally {
      other.close();
    }
  });
});
