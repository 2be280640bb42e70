/**
 * The dashboard in a real browser: headless Debian Chromium driven by playwright-core, against a real
 * `rdzv serve --http-port` while node processes join, complete a round, and one of them is SIGKILLed. The
 * page must show those events in that order as they happen, without a reload.
 */

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { type Browser, chromium } from "playwright-core";
import { createDashboardApp } from "../src/server/dashboard-app.js";
import { startHttpServer } from "../src/server/http-server.js";
import { KvEngine } from "../src/store/kv-engine.js";
import { type NodeProc, startNodes } from "./helpers/rdzv-node-procs.js";
import { type ServeProcess, startServe } from "./helpers/serve-process.js";

const CHROMIUM = "/usr/bin/chromium";

async function launch(): Promise<Browser> {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: the dashboard browser test needs Debian's Chromium. Install it: apt-get install -y chromium`,
    );
  }
  // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox"],
    timeout: 120_000,
  });
}

async function dashboardUrl(serve: ServeProcess): Promise<string> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const m = /rdzv dashboard on (http:\/\/\S+)/.exec(serve.output());
    if (m !== null) return m[1]!;
    if (Date.now() > deadline) throw new Error(`rdzv serve printed no dashboard URL:\n${serve.output()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("dashboard in Chromium", () => {
  let browser: Browser;
  let serve: ServeProcess;
  let nodes: NodeProc[] = [];
  before(async () => {
    browser = await launch();
    serve = await startServe(["--http-port", "0"]);
  });
  after(async () => {
    await Promise.all(nodes.map((n) => n.kill()));
    await serve?.kill();
    await browser?.close();
  });

  it("shows nodes joining, the round completing and a killed node lost, in that order, live", async () => {
    const url = await dashboardUrl(serve);
    const page = await browser.newPage();
    const problems: string[] = [];
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    page.on("console", (msg) => {
      if (msg.type() === "error") problems.push(`console: ${msg.text()}`);
    });
    let loads = 0;
    page.on("load", () => loads++);
    await page.goto(url);
    await page.locator("#conn.on").waitFor({ timeout: 30_000 });
    assert.equal(await page.locator("#no-runs").isVisible(), true);
    // Survives only as long as the page is not reloaded.
    await page.evaluate(() => {
      (globalThis as unknown as { marker: number }).marker = 42;
    });

    nodes = startNodes(3, `127.0.0.1:${serve.port}`, "job", 2, 3);
    await page.locator('#timeline li[data-type="completed"]').waitFor({ timeout: 60_000 });
    await page.locator('#run-title [data-state="complete"]').waitFor({ timeout: 30_000 });
    for (const n of nodes) {
      await page
        .locator(`#run tr[data-status="alive"]`, { hasText: `_${n.pid}_` })
        .waitFor({ timeout: 30_000 });
    }
    assert.equal(await page.locator('#runs tr[data-run="job"] [data-state="complete"]').count(), 1);

    const victim = nodes[1]!;
    await victim.kill();
    // Only the victim's loss counts (a starved machine could make another node miss keep-alives).
    await page
      .locator('#timeline li[data-type="nodeLost"]', { hasText: `_${victim.pid}_` })
      .waitFor({ timeout: 60_000 });
    const items = await page
      .locator("#timeline li")
      .evaluateAll((lis) =>
        lis.map((li) => ({ type: li.getAttribute("data-type"), text: li.textContent ?? "" })),
      );
    const types = items.map((i) => i.type);
    assert.deepEqual(types.slice(0, 4), ["joined", "joined", "joined", "completed"], JSON.stringify(items));
    const lost = items.findIndex((i) => i.type === "nodeLost" && i.text.includes(`_${victim.pid}_`));
    assert.ok(lost > 3, JSON.stringify(items));
    assert.match(
      items[lost]!.text,
      new RegExp(`round 0 {2}nodeLost 127\\.0\\.0\\.1_${victim.pid}_\\d+ \\(slot \\d\\)`),
    );
    for (const n of nodes) {
      assert.ok(
        items.slice(0, 3).some((i) => i.text.includes(`_${n.pid}_`)),
        `joined ${n.pid}: ${JSON.stringify(items)}`,
      );
    }

    // The survivors re-form round 1 and the page follows.
    await page.locator("#run-title", { hasText: "round 1" }).waitFor({ timeout: 60_000 });
    assert.equal(
      await page.evaluate(() => (globalThis as unknown as { marker?: number }).marker),
      42,
      "the page reloaded",
    );
    assert.equal(loads, 1, "the page loaded more than once");
    assert.deepEqual(problems, []);
    await page.close();
  });

  it("shows every column of the run list on a 1280 px screen, the run below it, and the two side by side on a 1920 px one", async () => {
    const engine = new KvEngine();
    const set = (key: string, value: string) => engine.set(`/${key}`, Buffer.from(value));
    const longId = `job-${"0123456789abcdef".repeat(6)}`;
    for (const id of ["short", longId]) set(`rdzv/${id}/open`, "0");
    const app = createDashboardApp({ engine, processMetrics: false });
    const http = await startHttpServer({ port: 0, fetch: app.fetch });
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    /** Whether a pane's content is wider than the pane (a column cut off, to scroll to). */
    const overflows = (selector: string) =>
      page.locator(selector).evaluate((e) => e.scrollWidth > e.clientWidth);
    try {
      await page.goto(`${http.url}#run=short&source=rdzv`);
      await page.locator("#runs tbody tr", { hasText: "short" }).waitFor({ timeout: 30_000 });
      // Before: the run list took a quarter of the width and cut off "nodes" and "waiting".
      assert.equal(await overflows("#runs-pane"), false, "the run list fits at 1280 px");
      const long = page.locator("#runs td.run-id", { hasText: "job-" });
      assert.equal(
        await long.getAttribute("title"),
        longId,
        "a long run id is shortened; its title holds it whole",
      );
      const panes = async () =>
        Promise.all(["#runs-pane", "#run-pane"].map(async (sel) => (await page.locator(sel).boundingBox())!));
      let [runs, run] = await panes();
      assert.ok(run!.y >= runs!.y + runs!.height, "the run below the run list");
      await page.setViewportSize({ width: 1920, height: 900 });
      [runs, run] = await panes();
      assert.ok(run!.x >= runs!.x + runs!.width, "the run beside the run list");
      assert.equal(await overflows("#runs-pane"), false, "the run list fits at 1920 px");
    } finally {
      await page.close();
      app.close();
      await http.close();
    }
  });

  it("says when the run list and a run's node lists are capped", async () => {
    const engine = new KvEngine();
    const set = (key: string, value: string) => engine.set(`/${key}`, Buffer.from(value));
    for (const id of ["a", "b", "c"]) set(`rdzv/${id}/open`, "0");
    set("rdzv/a/r0/tickets", "1000000000");
    const app = createDashboardApp({ engine, processMetrics: false, maxRunsListed: 2, maxNodesShown: 50 });
    const http = await startHttpServer({ port: 0, fetch: app.fetch });
    const page = await browser.newPage();
    try {
      await page.goto(`${http.url}#run=a&source=rdzv`);
      await page
        .locator("#runs-capped", { hasText: "Showing 2 of 3 runs (capped)" })
        .waitFor({ timeout: 30_000 });
      assert.equal(await page.locator("#runs tbody tr").count(), 2);
      await page.locator("#run h3", { hasText: "Participants (50, capped: see the notes)" }).waitFor();
      await page.locator("#run .notes", { hasText: "showing 50 of 1000000000 tickets (capped)" }).waitFor();
    } finally {
      await page.close();
      app.close();
      await http.close();
    }
  });
});
