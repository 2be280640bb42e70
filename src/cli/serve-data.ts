/**
 * `rdzv serve --data-dir DIR [--fsync always|interval|never] [--repair]`: the durability options, their
 * help text, and opening the journal (src/store/journal.ts) that keeps the store across restarts.
 */

import type { Logger } from "../log.js";
import {
  type DroppedTail,
  FsyncPolicy,
  type Journal,
  JournalCorruptError,
  openJournal,
  type StorageFailedError,
} from "../store/journal.js";
import { KvEngine } from "../store/kv-engine.js";
import { intOption, UsageError } from "./args.js";

/** parseArgs definitions of the durability options. */
export const DATA_OPTIONS = {
  "data-dir": { type: "string" },
  fsync: { type: "string" },
  "fsync-interval-ms": { type: "string" },
  repair: { type: "boolean" },
} as const;

/** Help lines of the durability options. */
export const DATA_HELP = `  --data-dir DIR           keep the store in DIR across restarts (journal + snapshots; default:
                           memory only). A killed server loses nothing it acknowledged
  --fsync POLICY           when DIR is flushed to disk: always (each write), interval (default; a
                           machine crash loses at most the last interval) or never (the kernel decides)
  --fsync-interval-ms N    the interval of --fsync interval (default 100)
  --repair                 start on a journal damaged before its end: keep its records before the bad
                           one, save the bytes from there to DIR/journal-G.dropped-OFFSET and drop them
`;

/** The parsed values of `DATA_OPTIONS`. */
export type DataValues = {
  [K in keyof typeof DATA_OPTIONS]?: (typeof DATA_OPTIONS)[K]["type"] extends "boolean"
    ? boolean | undefined
    : string | undefined;
};

/** The store's data for `rdzv serve`: the engine to serve, and its journal when there is a data dir. */
export interface ServeData {
  /** The engine replayed from the data dir (undefined without one: the server makes its own). */
  readonly engine: KvEngine | undefined;
  readonly journal: Journal | undefined;
  /** Calls `listener` once if the journal fails (the server must stop). */
  onFailure(listener: (err: StorageFailedError) => void): void;
  /** Stops recording and releases the directory; idempotent. */
  close(): void;
}

const POLICIES = new Set<string>(Object.values(FsyncPolicy));

/**
 * Opens `--data-dir` when given and writes what it restored to `out`. Throws `UsageError` for bad values,
 * and the journal's errors (corrupt files, a directory in use) otherwise.
 */
export function openServeData(values: DataValues, logger: Logger, out: NodeJS.WritableStream): ServeData {
  const dir = values["data-dir"];
  const fsync = values.fsync ?? FsyncPolicy.Interval;
  if (!POLICIES.has(fsync)) {
    throw new UsageError(`--fsync must be one of ${[...POLICIES].join(", ")}, got ${JSON.stringify(fsync)}`);
  }
  const fsyncIntervalMs = intOption("fsync-interval-ms", values["fsync-interval-ms"], 100, 1, 3_600_000);
  if (dir === undefined) {
    if (values.fsync !== undefined || values["fsync-interval-ms"] !== undefined || values.repair) {
      throw new UsageError("--fsync, --fsync-interval-ms and --repair need --data-dir");
    }
    return { engine: undefined, journal: undefined, onFailure: () => {}, close: () => {} };
  }
  if (dir.trim() === "") throw new UsageError("--data-dir must not be empty");
  let failure: StorageFailedError | undefined;
  let listener: ((err: StorageFailedError) => void) | undefined;
  const engine = new KvEngine();
  const journal = withRepairHint(() =>
    openJournal(engine, {
      dir,
      fsync: fsync as FsyncPolicy,
      fsyncIntervalMs,
      repair: values.repair === true,
      logger,
      onError: (err) => {
        failure = err;
        listener?.(err);
      },
    }),
  );
  const { snapshotRecords, journalRecords, droppedTail: tail } = journal.stats;
  const policy = fsync === FsyncPolicy.Interval ? `interval ${fsyncIntervalMs} ms` : fsync;
  out.write(
    `rdzv store: data in ${dir} (fsync ${policy}): ${engine.size} keys restored from ` +
      `${snapshotRecords} snapshot and ${journalRecords} journal records` +
      `${tail === undefined ? "" : ` (${describeTail(tail)})`}\n`,
  );
  return {
    engine,
    journal,
    onFailure: (l) => {
      listener = l;
      if (failure !== undefined) l(failure);
    },
    close: () => journal.close(),
  };
}

/** Runs `open`; a journal that `--repair` would open gets its refusal say so. */
function withRepairHint<T>(open: () => T): T {
  try {
    return open();
  } catch (err) {
    if (!(err instanceof JournalCorruptError && err.repairable)) throw err;
    throw new JournalCorruptError(
      `${err.message}. Nothing was changed. To start anyway, run again with --repair: it keeps the ` +
        "records before the bad one, saves the bytes from it on to a .dropped- file next to the journal, " +
        "and drops them (what comes after the bad record is lost to the store)",
      { cause: err },
    );
  }
}

function describeTail(tail: DroppedTail): string {
  if (tail.kind === "corrupt") {
    return (
      `repaired: ${tail.reason}; kept the records before byte ${tail.offset}, dropped the ${tail.bytes} ` +
      `bytes from there (${tail.records} intact records among them); they are in ${tail.savedTo}`
    );
  }
  const saved = tail.savedTo === undefined ? "" : `; its bytes are in ${tail.savedTo}`;
  return tail.kind === "cut short"
    ? `a last record cut short, ${tail.bytes} bytes, dropped${saved}`
    : `a damaged last record of ${tail.bytes} bytes dropped${saved}`;
}
