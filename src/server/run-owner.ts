/**
 * Which run a key belongs to, by the key layouts of run-keys.ts: what `rdzv serve --run-ttl` deletes with
 * a run (run-retention.ts). Pure: a key in, its owner out.
 *
 * rdzv's layout (`StoreRendezvousBackend`, `LauncherStore`): under `rdzv/<run id>/`, the keys `open` and
 * `closed`, a round's `r<R>/outcome|tickets|lead|ended`, a slot's `r<R>/node|hb|gone/<slot>`, everything
 * in a round's store (`r<R>/store/...`, a `PrefixStore`'s keys, whatever its users wrote) and everything
 * the launcher keeps (`launcher/...`). PyTorch's c10d layout (torchrun's dynamic rendezvous): the state key
 * `torch.rendezvous.<run id>` and every key of a round's `PrefixStore`,
 * `torch.rendezvous.<run id>.<round>/...` (torchelastic's agents write theirs there too).
 *
 * Any other key, under `rdzv/` or not, belongs to no run: rdzv never writes `rdzv/<id>/r01/...` or
 * `rdzv/<id>/notes`, so a user's key there is kept, as every plain TCPStore key is.
 */

/** The run a key belongs to: its layout and run id. */
export interface RunOwner {
  readonly layout: "rdzv" | "pytorch";
  readonly runId: string;
}

const RDZV_PREFIX = "rdzv/";
const TORCH_PREFIX = "torch.rendezvous.";

/** What may follow `rdzv/<run id>/` in a run's keys (decimal numbers without leading zeros, as written). */
const RDZV_RUN_PATH =
  /^(?:open|closed|launcher\/.*|r(?:0|[1-9]\d*)\/(?:outcome|tickets|lead|ended|(?:node|hb|gone)\/(?:0|[1-9]\d*)|store\/.*))$/s;
/** A run id that is a path into some round's store (as run-keys.ts's INSIDE_ROUND_STORE). */
const INSIDE_ROUND_STORE = /\/r\d+\/store(\/|$)/;
/** `<run id>.<round>`, the prefix of a PyTorch round's store. */
const TORCH_ROUND_PREFIX = /^(.+)\.(?:0|[1-9]\d*)$/s;

/**
 * The run that user key `key` belongs to (see the file comment), or `undefined` (most keys: quick tests
 * first). An rdzv run id may hold "/": of the ids after which the rest of the key reads as a run's key,
 * the longest is the owner, so `rdzv/a/b/open` belongs to run "a/b", not to run "a", and a key that
 * parses as an rdzv key (`parseRdzvKey`) belongs to the run it names. An id that is a path into a round's
 * store names no run (`rdzv/a/r0/store/x/open` is a key of run "a"'s round store).
 */
export function runOwnerOf(key: string): RunOwner | undefined {
  if (key.startsWith(RDZV_PREFIX)) {
    const runId = rdzvOwner(key);
    return runId === undefined ? undefined : { layout: "rdzv", runId };
  }
  if (key.startsWith(TORCH_PREFIX)) {
    const runId = torchOwner(key.slice(TORCH_PREFIX.length));
    return runId === undefined ? undefined : { layout: "pytorch", runId };
  }
  return undefined;
}

function rdzvOwner(key: string): string | undefined {
  for (let at = key.lastIndexOf("/"); at > RDZV_PREFIX.length; at = key.lastIndexOf("/", at - 1)) {
    const first = key.charCodeAt(at + 1);
    // o(pen), c(losed), l(auncher), r(ound): most candidate splits end here.
    if (first !== 0x6f && first !== 0x63 && first !== 0x6c && first !== 0x72) continue;
    if (!RDZV_RUN_PATH.test(key.slice(at + 1))) continue;
    const runId = key.slice(RDZV_PREFIX.length, at);
    if (!INSIDE_ROUND_STORE.test(runId)) return runId;
  }
  return undefined;
}

/** The run id of `torch.rendezvous.` + `rest`: a state key (no "/"), or a key of a round's store. */
function torchOwner(rest: string): string | undefined {
  const slash = rest.indexOf("/");
  if (slash < 0) return rest === "" ? undefined : rest;
  return TORCH_ROUND_PREFIX.exec(rest.slice(0, slash))?.[1];
}

/** The key whose presence makes `owner` a run (run-keys.ts `runListKey`): rdzv's `open`, PyTorch's state key. */
export function runListKeyOf(owner: RunOwner): string {
  return owner.layout === "rdzv" ? `${RDZV_PREFIX}${owner.runId}/open` : TORCH_PREFIX + owner.runId;
}
