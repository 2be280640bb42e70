/**
 * The reaper: a tiny `/bin/sh` process that an agent starts with a pipe on its stdin and tells about each
 * worker process group (`+PGID` / `-PGID` lines). When the pipe ends with groups still listed, the agent
 * died without stopping its workers (SIGKILL, OOM kill, crash): the reaper sends SIGTERM to every listed
 * group, SIGKILL after the grace period, and exits. This is what Linux's PR_SET_PDEATHSIG would give,
 * which Node cannot set on its children. A shell starts in about a millisecond; a second Node would take
 * tens of milliseconds of CPU on every launch. The agent's folder of worker error files, named by a
 * `=PATH` line, is removed when the pipe ends, unless an `=` line withdrew it (the agent removed it itself).
 */

import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import type { Socket } from "node:net";
import type { Logger } from "../log.js";

/**
 * `$1`: grace in seconds. Ignores the signals a terminal or a stray `kill` would send it. A `=PATH` line names
 * a folder to remove after the kill (the agent's error files; `=` alone forgets it).
 */
const SCRIPT = `
trap '' INT TERM HUP
groups=""
dir=""
while IFS= read -r line; do
  case "$line" in
    +*) groups="$groups \${line#+}" ;;
    -*) keep=""; for g in $groups; do [ "$g" = "\${line#-}" ] || keep="$keep $g"; done; groups="$keep" ;;
    =*) dir="\${line#=}" ;;
  esac
done
if [ -n "$groups" ]; then
  for g in $groups; do kill -s TERM -- "-$g" 2>/dev/null; done
  sleep "$1"
  for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
fi
[ -n "$dir" ] && rm -rf -- "$dir"
exit 0
`;

/** A running reaper. */
export interface Reaper {
  /** The reaper will kill this process group if the agent dies. */
  watch(pgid: number): void;
  /** The group is stopped; forget it. */
  unwatch(pgid: number): void;
  /**
   * The reaper removes folder `path` (recursively) if the agent dies; `undefined` forgets it. A path with a
   * line break cannot be passed on and is ignored.
   */
  removeOnDeath(path: string | undefined): void;
  /** Lets the reaper exit (after `unwatch` of every group, so it kills nothing). Idempotent. */
  close(): Promise<void>;
}

/**
 * Starts a reaper that gives the groups `graceMs` between SIGTERM and SIGKILL. Never keeps this process
 * alive. Returns `undefined` (and logs) when it cannot start: the agent then works without one.
 */
export function startReaper(graceMs: number, logger: Logger): Reaper | undefined {
  let child: ChildProcess;
  try {
    const graceSecs = (Math.max(0, Math.round(graceMs)) / 1000).toFixed(3);
    child = spawn("/bin/sh", ["-c", SCRIPT, "rdzv-reaper", graceSecs], {
      detached: true,
      stdio: ["pipe", "ignore", "ignore"],
    });
  } catch (err) {
    logger.warn("could not start the reaper: workers may outlive a killed agent", { error: String(err) });
    return undefined;
  }
  child.on("error", (err) => {
    logger.warn("the reaper failed: workers may outlive a killed agent", { error: String(err) });
  });
  child.unref();
  const stdin = child.stdin!;
  (stdin as Socket).unref?.();
  stdin.on("error", () => {});
  let closed: Promise<void> | undefined;
  const send = (line: string): void => {
    if (closed === undefined && !stdin.destroyed) stdin.write(`${line}\n`);
  };
  return {
    watch: (pgid) => send(`+${pgid}`),
    unwatch: (pgid) => send(`-${pgid}`),
    removeOnDeath: (path) => {
      if (path === undefined || !/[\n\r]/.test(path)) send(`=${path ?? ""}`);
    },
    close() {
      closed ??= (async () => {
        const exited =
          child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : once(child, "exit");
        stdin.end();
        const timer = setTimeout(() => child.kill("SIGKILL"), 2000);
        await exited.catch(() => undefined);
        clearTimeout(timer);
      })();
      return closed;
    },
  };
}
