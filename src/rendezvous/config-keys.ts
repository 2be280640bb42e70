/**
 * The `--rdzv-conf` keys rdzv's settings and built-in backends read, and the typo warnings `rdzv run`
 * gives for the others (`unreadConfigKeys`): a key PyTorch reads that rdzv does not gets what to write
 * instead, a near miss the key it likely meant.
 */

/** The etcd backend's keys, under PyTorch's `etcd` names and its `etcd-v2` names for the TLS files. */
const ETCD_KEYS = [
  "protocol",
  "cacert",
  "cert",
  "key",
  "ca_cert",
  "ssl_cert",
  "ssl_cert_key",
  "username",
  "password",
  "key_prefix",
] as const;

/**
 * The config keys rdzv reads, by built-in backend. `common` are those `resolveRendezvousSettings` reads
 * for every backend; the others are read by the backend's own module (`backends/etcd.ts`,
 * `backends/redis.ts`). A backend registered by the user reads keys nobody here knows.
 */
export const RENDEZVOUS_CONFIG_KEYS = {
  common: [
    "join_timeout",
    "last_call_timeout",
    "close_timeout",
    "heartbeat_timeout",
    "keep_alive_interval",
    "heartbeat",
    "keep_alive_max_attempt",
    "read_timeout",
    "timeout",
    "store_unreachable_timeout",
    "is_host",
    "local_addr",
    "sticky_ranks",
    "use_agent_store",
    "rank",
    "world_size",
  ],
  c10d: [],
  static: [],
  etcd: ETCD_KEYS,
  "etcd-v2": ETCD_KEYS,
  redis: ["protocol", "cacert", "cert", "key", "username", "password", "db", "key_prefix"],
} as const satisfies Record<string, readonly string[]>;

/**
 * Keys PyTorch's backends read that rdzv's do not, with what to write instead: PyTorch's legacy `etcd`
 * backend's `etcd_prefix`; `store_type` picks PyTorch c10d's `FileStore`.
 */
const PYTORCH_ONLY_KEYS: Readonly<Record<string, Readonly<Record<string, string>>>> = {
  etcd: { etcd_prefix: "rdzv's etcd backend takes a key prefix as 'key_prefix'" },
  "etcd-v2": { etcd_prefix: "rdzv's etcd backend takes a key prefix as 'key_prefix'" },
  c10d: { store_type: "rdzv's c10d backend always uses a TCP store" },
};

/** A config key the backend does not read (see `unreadConfigKeys`). */
export interface UnreadConfigKey {
  readonly key: string;
  readonly backend: string;
  /** A known key it is likely a misspelling of, or what rdzv takes instead of a PyTorch-only key. */
  readonly hint: string | undefined;
  /** Every key the backend reads. */
  readonly known: readonly string[];
}

/**
 * The keys of `keys` that built-in `backend` does not read, in order. PyTorch, and so rdzv, ignores them:
 * this is for warning about typos (`join-timeout`, `last_call_timout`). Empty for a backend that is not
 * built in, whose keys are unknown.
 */
export function unreadConfigKeys(backend: string, keys: readonly string[]): UnreadConfigKey[] {
  if (backend === "common" || !Object.hasOwn(RENDEZVOUS_CONFIG_KEYS, backend)) return [];
  const own = RENDEZVOUS_CONFIG_KEYS[backend as keyof typeof RENDEZVOUS_CONFIG_KEYS];
  const known: readonly string[] = [...RENDEZVOUS_CONFIG_KEYS.common, ...own];
  return keys
    .filter((key) => !known.includes(key))
    .map((key) => ({ key, backend, hint: unreadKeyHint(backend, key, known), known }));
}

function unreadKeyHint(backend: string, key: string, known: readonly string[]): string | undefined {
  const pytorchOnly = PYTORCH_ONLY_KEYS[backend];
  if (pytorchOnly !== undefined && Object.hasOwn(pytorchOnly, key)) return pytorchOnly[key];
  const closest = closestKey(key, known);
  return closest === undefined ? undefined : `did you mean '${closest}'?`;
}

/** "config option 'x' is not read by the c10d backend and is ignored (did you mean ...?); it reads: ..." */
export function formatUnreadConfigKey(u: UnreadConfigKey): string {
  const hint = u.hint === undefined ? "" : ` (${u.hint})`;
  return `config option '${u.key}' is not read by the ${u.backend} backend and is ignored${hint}; it reads: ${u.known.join(", ")}`;
}

/**
 * The known key nearest to `key` when it is near enough to be a misspelling: `-` read as `_`, case
 * ignored, then the fewest single-character edits, at most a third of the key's length (at least 1).
 */
function closestKey(key: string, known: readonly string[]): string | undefined {
  const norm = key.toLowerCase().replaceAll("-", "_");
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(norm.length / 3)) + 1;
  for (const k of known) {
    const d = editDistance(norm, k);
    if (d < bestDistance) {
      best = k;
      bestDistance = d;
    }
  }
  return best;
}

/** Levenshtein distance, adjacent transpositions counting as one edit. */
function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) =>
    Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)),
  );
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(rows[i - 1]![j]! + 1, rows[i]![j - 1]! + 1, rows[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        d = Math.min(d, rows[i - 2]![j - 2]! + 1);
      rows[i]![j] = d;
    }
  }
  return rows[a.length]![b.length]!;
}
