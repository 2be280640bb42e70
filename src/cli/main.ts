#!/usr/bin/env node
/** The `rdzv` command: sub-command dispatch only; the work lives in the modules it calls. */

import { RendezvousError } from "../errors.js";
import { UsageError } from "./args.js";
import { RUN_HELP, runCommand } from "./run.js";
import { SERVE_HELP, serveCommand } from "./serve.js";
import { STATUS_HELP, statusCommand } from "./status.js";

const HELP = `Usage: rdzv <command> [options]

Commands:
  serve     run the rendezvous store server (PyTorch TCPStore compatible)
  run       launch workers elastically on this node, like torchrun
  status    show the rendezvous runs in a store: rounds, members, keep-alives

Run 'rdzv <command> --help' for a command's options.
`;

const COMMANDS: Record<string, { run: (argv: readonly string[]) => Promise<number>; help: string }> = {
  serve: { run: serveCommand, help: SERVE_HELP },
  run: { run: runCommand, help: RUN_HELP },
  status: { run: statusCommand, help: STATUS_HELP },
};

/** Commands that go on when nobody reads their output any more: the launcher and the server. */
const OUTLIVE_READERS = new Set(["run", "serve"]);

/** Exit status after a reader went away: that of a program killed by SIGPIPE (128 + 13), as `cat` has. */
const BROKEN_PIPE_EXIT = 141;

/**
 * A reader that went away (`rdzv run ... | head -1`, `rdzv status | head`) makes writes to that stream
 * fail with EPIPE, an 'error' event that crashed the process with a stack trace (for `run`: workers reaped,
 * the rendezvous not left). `run` and `serve` stop writing to the stream and carry on (torchrun's workers
 * write to the terminal themselves and keep running too); the other commands exit quietly. Other errors
 * are thrown as before.
 */
function handleBrokenPipes(command: string | undefined): void {
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code !== "EPIPE") throw err;
      if (command === undefined || !OUTLIVE_READERS.has(command)) process.exit(BROKEN_PIPE_EXIT);
      stopWriting(stream);
    });
  }
}

/**
 * Makes writes to `stream` no-ops. process.stdout and process.stderr undo their own destruction after an
 * error, so each later write would fail again, and a writer waiting for 'drain' would wait forever: the
 * 'drain' emitted here releases those.
 */
function stopWriting(stream: NodeJS.WriteStream): void {
  stream.write = ((_chunk: unknown, encoding?: unknown, callback?: unknown): boolean => {
    const done = typeof encoding === "function" ? encoding : callback;
    if (typeof done === "function") process.nextTick(done as () => void);
    return true;
  }) as typeof stream.write;
  stream.emit("drain");
}

/** A command's help up to its first blank line (its usage lines), ending in a newline. */
function synopsis(help: string): string {
  const end = help.indexOf("\n\n");
  return `${end < 0 ? help : help.slice(0, end)}\n`;
}

async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
  handleBrokenPipes(name);
  if (name === undefined || name === "-h" || name === "--help" || name === "help") {
    process.stdout.write(HELP);
    return name === undefined ? 2 : 0;
  }
  if (name === "--version" || name === "-V") {
    const { createRequire } = await import("node:module");
    const pkg = createRequire(import.meta.url)("../../../package.json") as { version: string };
    process.stdout.write(`${pkg.version}\n`);
    return 0;
  }
  const command = COMMANDS[name];
  if (command === undefined) {
    process.stderr.write(`rdzv: unknown command ${JSON.stringify(name)}\n\n${HELP}`);
    return 2;
  }
  try {
    return await command.run(rest);
  } catch (err) {
    const usage = err instanceof UsageError || (err as { code?: string }).code?.startsWith("ERR_PARSE_ARGS");
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`rdzv ${name}: ${message}\n`);
    if (usage) {
      // The synopsis and where the rest is, not the whole help: that would scroll the error away.
      process.stderr.write(`${synopsis(command.help)}Run 'rdzv ${name} --help' for its options.\n`);
      return 2;
    }
    return err instanceof RendezvousError ? 1 : 70;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`rdzv: ${String(err)}\n`);
    process.exitCode = 70;
  },
);
