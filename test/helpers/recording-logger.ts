/** A logger for tests that keeps its warnings (message and fields) and drops the rest. */

import type { Logger } from "../../src/log.js";

/** One warning as logged. */
export interface LoggedWarning {
  message: string;
  fields?: Record<string, unknown>;
}

/** A logger whose `warnings` holds every warning logged, in order. */
export function recordingLogger(): Logger & { warnings: LoggedWarning[] } {
  const warnings: LoggedWarning[] = [];
  return {
    warnings,
    debug() {},
    info() {},
    warn: (message, fields) => void warnings.push(fields === undefined ? { message } : { message, fields }),
    error() {},
  };
}
