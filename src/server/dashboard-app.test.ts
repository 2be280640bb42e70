import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type NodeProc, startNodes } from "../../test/helpers/rdzv-node-procs.js";
import { connectTCPStore } from "../store/tcp/client.js";
import { createTCPStoreServer, type TCPStoreServer } from "../store/tcp/server.js";
import { createDashboardApp, type DashboardApp } from "./dashboard-app.js";
import { startHttpServer } from "./http-server.js";
import type { RunSummary, RunView, TimelineEvent } from "./run-view.js";
import { TORCH_NULL_SENTINEL } from "./torch-state.js";

/** What the dashboard pushes (`runs`, `run` and `timeline` events). */
interface Pushed {
  now: number;
  runs?: RunSummary[];
  views?: RunView[];
  events?: TimelineEvent[];
  reset?: boolean;
}
type Sse = { event: string; data: Pushed };

/** Reads server-sent events off a response body. */
class SseReader {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #decoder = new TextDecoder();
  #buffer = "";
  readonly received: Sse[] = [];

  constructor(body: ReadableStream<Uint8Array>) {
    this.#reader = body.getReader();
  }

  /** Reads until an event satisfies `match`; returns it. */
  async until(match: (e: Sse) => boolean, timeoutMs = 60_000): Promise<Sse> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.received.find(match);
      if (found !== undefined) return found;
      if (Date.now() > deadline)
        throw new Error(`no such event in ${JSON.stringify(this.received).slice(-2000)}`);
      const { done, value } = await this.#reader.read();
      if (done) throw new Error(`stream ended; got ${JSON.stringify(this.received).slice(-2000)}`);
      this.#buffer += this.#decoder.decode(value, { stream: true });
      for (let end = this.#buffer.indexOf("\n\n"); end >= 0; end = this.#buffer.indexOf("\n\n")) {
        const block = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (event !== undefined && data !== undefined)
          this.received.push({ event, data: JSON.parse(data) as Pushed });
      }
    }
  }

  cancel(): Promise<void> {
    return this.#reader.cancel();
  }
}

const get = (app: DashboardApp, path: string, method = "GET") =>
  app.fetch(new Request(`http://dashboard${path}`, { method }));

/** The value of one sample of `name{labels}` in an exposition. */
function sample(text: string, series: string): number {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  assert.ok(line !== undefined, `no ${series} in\n${text.slice(0, 3000)}`);
  return Number(line.slice(series.length + 1));
}

describe("dashboard routes (no socket)", () => {
  let server: TCPStoreServer;
  let app: DashboardApp;
  let nodes: NodeProc[] = [];
  before(async () => {
    server = await createTCPStoreServer({ port: 0 });
    app = createDashboardApp({
      engine: server.engine,
      stats: () => server.stats(),
      storeAddress: `127.0.0.1:${server.port}`,
      pushIntervalMs: 50,
    });
  });
  after(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    app?.close();
    await server?.close();
  });

  it("serves the page, its script and style, health, and clear errors", async () => {
    const page = await get(app, "/");
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-type") ?? "", /text\/html/);
    assert.match(page.headers.get("content-security-policy") ?? "", /script-src 'self'/);
    const html = await page.text();
    assert.match(html, /<script src="\/dashboard.js"><\/script>/);
    assert.doesNotMatch(html, /https?:\/\//, "no CDN");
    assert.match(await (await get(app, "/dashboard.js")).text(), /new EventSource\("\/events"/);
    assert.equal((await get(app, "/dashboard.css")).status, 200);
    assert.deepEqual(await (await get(app, "/healthz")).json(), {
      status: "ok",
      store: `127.0.0.1:${server.port}`,
      connections: 0,
      keys: 0,
    });
    const t0 = Date.now();
    const runs = (await (await get(app, "/api/runs")).json()) as {
      now: number;
      store: string;
      runs: unknown[];
    };
    assert.ok(runs.now >= t0 && runs.now <= Date.now());
    assert.deepEqual(
      { ...runs, now: 0 },
      { now: 0, store: `127.0.0.1:${server.port}`, runs: [], total: 0, truncated: false },
    );
    const missing = await get(app, "/api/runs/nope");
    assert.equal(missing.status, 404);
    assert.match(((await missing.json()) as { error: string }).error, /no run "nope"/);
    assert.equal((await get(app, "/nowhere")).status, 404);
    const post = await get(app, "/api/runs", "POST");
    assert.equal(post.status, 405);
    assert.equal(post.headers.get("allow"), "GET, HEAD");
    assert.equal((await get(app, "/api/runs/x?source=etcd")).status, 400);
    assert.equal((await get(app, "/api/runs/%E0%A4%A")).status, 400);
  });

  it("sends nosniff on every answer, and a CSP that forbids framing on the page", async () => {
    for (const path of [
      "/",
      "/dashboard.js",
      "/healthz",
      "/metrics",
      "/api/runs",
      "/api/runs/%3Cb%3E",
      "/x",
    ]) {
      const res = await get(app, path);
      assert.equal(res.headers.get("x-content-type-options"), "nosniff", path);
      assert.equal(res.headers.get("referrer-policy"), "no-referrer", path);
      await res.body?.cancel();
    }
    const csp = (await get(app, "/")).headers.get("content-security-policy") ?? "";
    assert.match(csp, /frame-ancestors 'none'/);
    assert.match(csp, /base-uri 'none'/);
  });

  it("shows a run forming, completing and losing a killed node, through the API, the event stream and /metrics", async () => {
    const events = await get(app, "/events?run=job");
    assert.equal(events.headers.get("content-type"), "text/event-stream; charset=utf-8");
    const sse = new SseReader(events.body!);
    await sse.until((e) => e.event === "timeline" && e.data.reset === true);

    nodes = startNodes(3, `127.0.0.1:${server.port}`, "job", 2, 3);
    await Promise.all(nodes.map((n) => n.waitFor((e) => e.event === "completed" && e.round === 0)));
    const list = (await (await get(app, "/api/runs")).json()) as { runs: RunSummary[] };
    assert.deepEqual(list.runs, [
      { runId: "job", source: "rdzv", state: "complete", round: 0, participants: 3, waiting: 0 },
    ]);
    const detail = (await (await get(app, "/api/runs/job")).json()) as {
      runs: RunView[];
      timeline: TimelineEvent[];
    };
    const pids = new Set(nodes.map((n) => n.pid));
    assert.deepEqual(
      detail.runs[0]?.participants.map((p) => p.rank),
      [0, 1, 2],
    );
    assert.ok(detail.runs[0]?.participants.every((p) => pids.has(p.pid!) && p.status === "alive"));
    assert.deepEqual(
      detail.timeline.map((e) => e.type),
      ["joined", "joined", "joined", "completed"],
    );
    await sse.until((e) => e.event === "run" && e.data.views?.[0]?.state === "complete");

    const victim = nodes[1]!;
    await victim.kill();
    // The victim's loss (a busy machine could also make a node miss keep-alives: only the victim counts).
    const isVictim = (t: TimelineEvent) =>
      t.type === "nodeLost" && (t.node?.id ?? "").includes(`_${victim.pid}_`);
    const lost = await sse.until((e) => e.event === "timeline" && e.data.events?.some(isVictim) === true);
    const lostEvent = lost.data.events?.find(isVictim);
    assert.equal(lostEvent?.round, 0);
    // The survivors re-form round 1 without the dead node.
    await Promise.all(
      [nodes[0]!, nodes[2]!].map((n) => n.waitFor((e) => e.event === "completed" && e.round === 1)),
    );
    const streamed = sse.received.filter((e) => e.event === "timeline").flatMap((e) => e.data.events ?? []);
    const types = streamed.map((e) => e.type);
    assert.deepEqual(types.slice(0, 4), ["joined", "joined", "joined", "completed"]);
    assert.ok(streamed.findIndex(isVictim) > 3, types.join());
    await sse.cancel();

    const metrics = await get(app, "/metrics");
    assert.match(metrics.headers.get("content-type") ?? "", /text\/plain/);
    const text = await metrics.text();
    assert.ok(sample(text, "rdzv_rendezvous_rounds_completed_total") >= 2);
    assert.ok(sample(text, "rdzv_rendezvous_nodes_lost_total") >= 1);
    assert.ok(sample(text, "rdzv_rendezvous_nodes_joined_total") >= 5);
    assert.ok(sample(text, "rdzv_rendezvous_latency_seconds_count") >= 2);
    assert.equal(sample(text, "rdzv_store_connections"), server.stats().connections);
    assert.ok(sample(text, 'rdzv_store_operations_total{op="add"}') > 0);
    assert.ok(sample(text, 'rdzv_store_operations_total{op="compareSet"}') > 0);
    // Survivors block in waitForRoundEnd, between short re-checks: look a few times.
    let waiters = sample(text, "rdzv_store_waiters");
    for (let i = 0; waiters < 1 && i < 100; i += 1) {
      await new Promise((r) => setTimeout(r, 50));
      waiters = sample(await (await get(app, "/metrics")).text(), "rdzv_store_waiters");
    }
    assert.ok(waiters >= 1, "survivors block in waitForRoundEnd");
    assert.match(text, /rdzv_process_cpu_user_seconds_total/);
  });

  it("ends its event streams when closed", async () => {
    const other = createDashboardApp({ engine: server.engine, processMetrics: false });
    const res = await get(other, "/events");
    const reader = res.body!.getReader();
    await reader.read();
    other.close();
    for (;;) if ((await reader.read()).done) break;
    assert.equal((await get(other, "/api/runs")).status, 503);
  });
});

describe("dashboard over HTTP", () => {
  it("serves the routes on a port and streams events until closed", async () => {
    const server = await createTCPStoreServer({ port: 0 });
    const app = createDashboardApp({ engine: server.engine, processMetrics: false });
    const http = await startHttpServer({ port: 0, fetch: app.fetch });
    try {
      assert.match(http.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
      const res = await fetch(`${http.url}api/runs`);
      assert.equal(res.status, 200);
      assert.deepEqual(((await res.json()) as { runs: unknown[] }).runs, []);
      const stream = await fetch(`${http.url}events`);
      const sse = new SseReader(stream.body!);
      await sse.until((e) => e.event === "runs");
      // A request target that looks like another host stays a path here.
      assert.equal((await fetch(`${http.url}/evil.example/healthz`)).status, 404);
    } finally {
      await http.close();
      app.close();
      await server.close();
    }
  });
});

describe("dashboard with an auth token", () => {
  it("requires the token (Bearer or Basic password) on every route but /healthz, and says how", async () => {
    const server = await createTCPStoreServer({ port: 0 });
    const app = createDashboardApp({ engine: server.engine, processMetrics: false, authToken: "s3cret" });
    const call = (path: string, authorization?: string) =>
      app.fetch(
        new Request(
          `http://dashboard${path}`,
          authorization === undefined ? {} : { headers: { authorization } },
        ),
      );
    const basic = (userPass: string) => `Basic ${Buffer.from(userPass).toString("base64")}`;
    try {
      for (const path of ["/", "/api/runs", "/api/runs/x", "/events", "/metrics", "/dashboard.js"]) {
        const res = await call(path);
        assert.equal(res.status, 401, path);
        assert.match(res.headers.get("www-authenticate") ?? "", /^Basic realm="rdzv dashboard"/);
        assert.match(((await res.json()) as { error: string }).error, /requires the store's auth token/);
      }
      for (const wrong of ["Bearer s3cre", "Bearer s3cret2", basic("s3cret:"), basic("s3cret"), "s3cret"]) {
        assert.equal((await call("/api/runs", wrong)).status, 401, wrong);
      }
      assert.equal((await call("/api/runs", "Bearer s3cret")).status, 200);
      assert.equal((await call("/api/runs", basic("anyone:s3cret"))).status, 200);
      assert.equal((await call("/healthz")).status, 200);
      assert.throws(() => createDashboardApp({ engine: server.engine, authToken: "" }), /authToken/);
    } finally {
      app.close();
      await server.close();
    }
  });

  it("over HTTP: the request's Authorization header reaches the routes", async () => {
    const server = await createTCPStoreServer({ port: 0 });
    const app = createDashboardApp({ engine: server.engine, processMetrics: false, authToken: "s3cret" });
    // Before, http-server.ts passed no request headers on: the right token got 401 as well.
    const http = await startHttpServer({ port: 0, fetch: app.fetch });
    try {
      assert.equal((await fetch(`${http.url}api/runs`)).status, 401);
      const ok = await fetch(`${http.url}api/runs`, { headers: { authorization: "Bearer s3cret" } });
      assert.equal(ok.status, 200);
    } finally {
      await http.close();
      app.close();
      await server.close();
    }
  });
});

describe("dashboard run list pushes", () => {
  it("pushes the run list when a run's keys are deleted (run retention, a client's delete)", async () => {
    const server = await createTCPStoreServer({ port: 0 });
    const { engine } = server;
    const app = createDashboardApp({ engine, processMetrics: false, pushIntervalMs: 20 });
    const runsOf = (e: Sse): string[] => (e.data.runs ?? []).map((r) => r.runId);
    try {
      const sse = new SseReader((await get(app, "/events")).body!);
      for (const key of ["/rdzv/a/open", "/rdzv/a/r0/hb/0", "/rdzv/b/open"])
        engine.set(key, Buffer.from("0"));
      await sse.until((e) => e.event === "runs" && runsOf(e).join() === "a,b", 30_000);
      engine.delete("/rdzv/a/r0/hb/0");
      engine.delete("/rdzv/a/open");
      await sse.until((e) => e.event === "runs" && runsOf(e).join() === "b", 30_000);
      await sse.cancel();
    } finally {
      app.close();
      await server.close();
    }
  });
});

describe("dashboard event stream cap", () => {
  it("answers 503 past maxEventStreams open streams, and serves again once one closes", async () => {
    const server = await createTCPStoreServer({ port: 0 });
    const app = createDashboardApp({ engine: server.engine, processMetrics: false, maxEventStreams: 2 });
    try {
      const a = await get(app, "/events");
      const b = await get(app, "/events?run=x");
      assert.equal(a.status, 200);
      assert.equal(b.status, 200);
      const refused = await get(app, "/events");
      assert.equal(refused.status, 503);
      assert.match(((await refused.json()) as { error: string }).error, /too many event streams open \(2/);
      // The other routes still answer.
      assert.equal((await get(app, "/api/runs")).status, 200);
      await a.body!.cancel();
      const c = await get(app, "/events");
      assert.equal(c.status, 200);
      await Promise.all([b.body!.cancel(), c.body!.cancel()]);
      assert.throws(
        () => createDashboardApp({ engine: server.engine, maxEventStreams: 0 }),
        /maxEventStreams/,
      );
    } finally {
      app.close();
      await server.close();
    }
  });
});

describe("dashboard event streams that do not keep up", () => {
  it("drops a client that never reads once its backlog passes maxEventBacklogBytes, and says so", async () => {
    const server = await createTCPStoreServer({ port: 0 });
    const warnings: Record<string, unknown>[] = [];
    const logger = {
      debug() {},
      info() {},
      error() {},
      warn: (_: string, f?: Record<string, unknown>) => void warnings.push(f ?? {}),
    };
    const app = createDashboardApp({
      engine: server.engine,
      processMetrics: false,
      pushIntervalMs: 10,
      maxEventBacklogBytes: 4096,
      logger,
    });
    try {
      const res = await get(app, "/events");
      const reader = res.body!.getReader(); // never reads past here
      // Each new run changes the run list: a bigger `runs` event every push.
      for (let i = 0; i < 200 && warnings.length === 0; i++) {
        server.engine.set(`/rdzv/run-${i}/open`, new TextEncoder().encode("0"));
        await new Promise((r) => setTimeout(r, 15));
      }
      assert.equal(warnings.length, 1, "dropped once");
      assert.equal(warnings[0]?.reason, "backlog");
      assert.ok(Number(warnings[0]?.backlogBytes) > 4096);
      await assert.rejects(async () => {
        for (;;) if ((await reader.read()).done) break;
      }, /dropped/);
    } finally {
      app.close();
      await server.close();
    }
  });
});

describe("dashboard run ids", () => {
  it("lists and shows non-ASCII run ids as clients wrote them (rdzv's and PyTorch's layout)", async () => {
    const server = await createTCPStoreServer({ port: 0 });
    const app = createDashboardApp({ engine: server.engine, processMetrics: false });
    const client = await connectTCPStore({ host: "127.0.0.1", port: server.port });
    try {
      await client.add("rdzv/ünï/open", 0);
      await client.set("torch.rendezvous.ünï", TORCH_NULL_SENTINEL);
      const list = (await (await get(app, "/api/runs")).json()) as { runs: RunSummary[] };
      assert.deepEqual(
        list.runs.map((r) => `${r.runId}/${r.source}`),
        ["ünï/pytorch", "ünï/rdzv"],
      );
      const detail = await get(app, `/api/runs/${encodeURIComponent("ünï")}`);
      assert.equal(detail.status, 200);
      const body = (await detail.json()) as { runs: RunView[] };
      assert.deepEqual(
        body.runs.map((r) => `${r.runId}/${r.source}`),
        ["ünï/rdzv", "ünï/pytorch"],
      );
      const one = (await (await get(app, "/api/runs/%C3%BCn%C3%AF?source=pytorch")).json()) as {
        runs: RunView[];
      };
      assert.deepEqual(
        one.runs.map((r) => `${r.runId}/${r.source}`),
        ["ünï/pytorch"],
      );
      assert.equal(
        (await get(app, "/api/runs/%C3%83%C2%BCn%C3%83%C2%AF")).status,
        404,
        "not the latin1 reading",
      );
    } finally {
      await client.close();
      app.close();
      await server.close();
    }
  });
});
