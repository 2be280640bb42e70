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

async function main(argv: readonly string[]): Promise<number> {
  const [name, ...rest] = argv;
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
      process.stderr.write(`\n${command.help}`);
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
