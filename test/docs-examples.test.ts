/**
 * The docs cannot rot: every ```ts block of README.md and docs/*.md is type-checked against the built
 * package (imports of "rdzv" resolve to dist/ as a user's would), README.md's are run, and each
 * `console.log(...); // TEXT` line in them must print TEXT. Every `--option` the docs name must be one that
 * `rdzv run`, `rdzv serve` or `rdzv status` takes (their --help), and every `RDZV_*` variable one the code
 * or tests read, and every relative link and repository path (src/..., test/..., ...) must exist. A torchrun
 * option the README names as one rdzv lacks is listed in TORCHRUN_ONLY.
 */

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { promisify } from "node:util";
import { RUN_HELP } from "../src/cli/run.js";
import { SERVE_HELP } from "../src/cli/serve.js";
import { STATUS_HELP } from "../src/cli/status.js";
import { REPO_ROOT } from "./helpers/torch.js";

const exec = promisify(execFile);

const DOCS = ["README.md", ...readdirSync(join(REPO_ROOT, "docs")).map((f) => join("docs", f))].filter((f) =>
  f.endsWith(".md"),
);

/** torchrun options the docs mention as ones rdzv does not take (or in torchrun's own command lines). */
const TORCHRUN_ONLY = new Set([
  "--log-dir",
  "--redirects",
  "--tee",
  "--local-ranks-filter",
  "--start-method",
  "--no-python",
  "--run-path",
  "--master-addr",
  "--master-port",
]);

interface Block {
  readonly file: string;
  readonly line: number;
  readonly code: string;
}

function tsBlocks(file: string): Block[] {
  const text = readFileSync(join(REPO_ROOT, file), "utf8");
  const blocks: Block[] = [];
  for (const m of text.matchAll(/^```ts\n([\s\S]*?)^```$/gm)) {
    blocks.push({ file, line: text.slice(0, m.index).split("\n").length, code: m[1]! });
  }
  return blocks;
}

/** A file name for a block: README.md line 12 -> README-md-12.ts. */
function moduleName(b: Block): string {
  return `${b.file.replace(/[^A-Za-z0-9]+/g, "-")}-${b.line}`;
}

const work: string[] = [];
after(() => {
  for (const d of work) rmSync(d, { recursive: true, force: true });
});

describe("the docs' TypeScript", () => {
  const blocks = DOCS.flatMap(tsBlocks);
  // Inside the repository, so that "rdzv" resolves to this package (its exports map) and @types/node is found.
  const dir = mkdtempSync(join(REPO_ROOT, "dist", "docs-examples-"));
  work.push(dir);
  let compiled: Promise<void> | undefined;
  const compile = (): Promise<void> => {
    compiled ??= (async () => {
      for (const b of blocks) writeFileSync(join(dir, `${moduleName(b)}.ts`), b.code);
      const tsconfig = JSON.parse(readFileSync(join(REPO_ROOT, "tsconfig.json"), "utf8")) as {
        compilerOptions: Record<string, unknown>;
      };
      const compilerOptions = {
        ...tsconfig.compilerOptions,
        rootDir: ".",
        outDir: "out",
        declaration: false,
        sourceMap: false,
        noUnusedLocals: true,
      };
      writeFileSync(join(dir, "tsconfig.json"), JSON.stringify({ compilerOptions, include: ["*.ts"] }));
      const tsc = join(REPO_ROOT, "node_modules", "typescript", "bin", "tsc");
      try {
        await exec(process.execPath, [tsc, "-p", dir], { cwd: dir });
      } catch (err) {
        const out = (err as { stdout?: string }).stdout ?? String(err);
        const where = blocks.map((b) => `${moduleName(b)}.ts is the block at ${b.file}:${b.line}`).join("\n");
        assert.fail(`the docs' TypeScript does not compile (run npm run build first):\n${out}\n${where}`);
      }
    })();
    return compiled;
  };

  it("finds the README's examples", () => {
    assert.ok(blocks.filter((b) => b.file === "README.md").length >= 2, "README.md has no ```ts blocks");
  });

  it("type-checks every block against the built package", async () => {
    await compile();
  });

  for (const b of blocks.filter((b) => b.file === "README.md")) {
    it(`runs README.md:${b.line} to its end, printing what its comments say`, async () => {
      await compile();
      const expected = [...b.code.matchAll(/console\.log\(.*\);\s*\/\/\s*(.+)$/gm)].map((m) => m[1]!.trim());
      let stdout: string;
      try {
        ({ stdout } = await exec(process.execPath, [join(dir, "out", `${moduleName(b)}.js`)], {
          cwd: dir,
          timeout: 60_000,
          killSignal: "SIGKILL",
        }));
      } catch (err) {
        const e = err as { killed?: boolean; stdout?: string; stderr?: string };
        const why = e.killed ? "did not exit within 60 s (does it close what it opens?)" : "failed";
        assert.fail(`README.md:${b.line} ${why}:\n${e.stdout ?? ""}${e.stderr ?? String(err)}`);
      }
      const lines = stdout.split("\n").map((l) => l.trim());
      for (const text of expected) assert.ok(lines.includes(text), `expected "${text}" in:\n${stdout}`);
    });
  }
});

describe("the docs' options and environment variables", () => {
  it("names only options rdzv's commands take", () => {
    const help = [RUN_HELP, SERVE_HELP, STATUS_HELP].join("\n").replaceAll("[no-]", "");
    const unknown: string[] = [];
    for (const file of DOCS.filter((f) => f !== "docs/reliability.md")) {
      const lines = readFileSync(join(REPO_ROOT, file), "utf8").split("\n");
      lines.forEach((line, i) => {
        for (const m of line.matchAll(/(?<![\w-])--([a-z][a-z0-9_-]*)/g)) {
          const option = `--${m[1]!.replaceAll("_", "-")}`;
          if (TORCHRUN_ONLY.has(option)) continue;
          if (!new RegExp(`${option}(?![\\w-])`).test(help)) unknown.push(`${file}:${i + 1}: ${m[0]}`);
        }
      });
    }
    assert.deepEqual(unknown, [], "options the docs name that no rdzv command takes");
  });

  it("links and names only files that exist", () => {
    const missing: string[] = [];
    for (const file of DOCS) {
      const text = readFileSync(join(REPO_ROOT, file), "utf8");
      const base = join(REPO_ROOT, file, "..");
      for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
        if (!/^[a-z]+:/.test(target!) && !existsSync(join(base, target!)))
          missing.push(`${file}: (${target})`);
      }
      for (const [path] of text.matchAll(
        /(?<![\w/.-])(?:src|test|bench|docs|examples|scripts)\/[\w./-]*\w/g,
      )) {
        if (!existsSync(join(REPO_ROOT, path))) missing.push(`${file}: ${path}`);
      }
    }
    assert.deepEqual(missing, [], "links and paths in the docs that do not exist");
  });

  it("names only RDZV_ variables the code or the tests use", () => {
    const sources = ["src", "test", "scripts"].flatMap((d) => files(join(REPO_ROOT, d)));
    const code = sources.map((f) => readFileSync(f, "utf8")).join("\n");
    const missing: string[] = [];
    for (const file of DOCS) {
      const text = readFileSync(join(REPO_ROOT, file), "utf8");
      for (const [name] of text.matchAll(/\bRDZV_[A-Z0-9]+(?:_[A-Z0-9]+)*\b/g)) {
        if (!new RegExp(`\\b${name}\\b`).test(code)) missing.push(`${file}: ${name}`);
      }
    }
    assert.deepEqual([...new Set(missing)], [], "RDZV_ names in the docs that nothing reads");
  });
});

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return files(path);
    return /\.(ts|mjs|js|py|sh)$/.test(name) ? [path] : [];
  });
}
