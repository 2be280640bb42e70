/** POSIX permission checks shared by the files rdzv keeps secrets in. */

import { statSync } from "node:fs";

/**
 * The permission bits of `path` (e.g. 0o755) when its group or other users have any access to it, else
 * `undefined` (also when it cannot be stat'ed: whoever opens it names that problem).
 */
export function modeOpenToOthers(path: string): number | undefined {
  let mode: number;
  try {
    mode = statSync(path).mode & 0o777;
  } catch {
    return undefined;
  }
  return (mode & 0o077) === 0 ? undefined : mode;
}
