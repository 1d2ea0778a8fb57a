/**
 * The replicated cluster state on this node: applies chosen entries in log order, keeps
 * the result (with the next instance to apply) in LMDB so a restart resumes without
 * re-applying, and tells a proposer whether its entry was accepted, and why not.
 */
import { Context, Data, Deferred, Effect, Layer, PubSub, Schedule, Schema, Stream, SubscriptionRef } from "effect"
import { open } from "lmdb"
import { mkdirSync } from "node:fs"
import {
  applyEntry,
  ClusterStateData,
  type BinlogTxn,
  type ClusterEntry,
  decodeEntry,
  encodeEntry,
  initialClusterState,
  type LogPosition,
  type Outcome
} from "../../domain/cluster/cluster.js"
import type { ProposeError } from "../../domain/paxos/errors.js"
import type { ChosenEntry } from "../../domain/paxos/messages.js"
import { LogCompacted, PaxosLog } from "../paxos/PaxosLog.js"
import type { StorageError } from "../paxos/PaxosStorage.js"
import { forkScopedLogged } from "../fibers.js"
import { Fifo } from "../../domain/fifo.js"

export class ClusterStateError extends Data.TaggedError("ClusterStateError")<{
  readonly operation: string
  readonly cause: unknown
}> {}

export interface ClusterSnapshot {
  readonly state: ClusterStateData
  /** The next instance to apply: everything below it is in `state`. */
  readonly appliedUpTo: number
}

/** One applied entry and what the state machine said. */
export interface AppliedEntry {
  readonly instance: number
  readonly index: number
  /** Undefined for a value that was not a valid entry (rejected as Malformed). */
  readonly entry: ClusterEntry | undefined
  readonly outcome: Outcome
  readonly state: ClusterStateData
}

export interface ClusterStateShape {
  readonly current: Effect.Effect<ClusterSnapshot>
  /**
   * The snapshot whenever the master record changes (master, its version, epoch, lease
   * length, members), current first. Binlog entries do not count: they are too many to
   * wake anyone for; use {@link awaitApplied} / {@link awaitSeq} to wait on progress.
   */
  readonly masterChanges: Stream.Stream<ClusterSnapshot>
  /** Completes once every instance below `upTo` is applied. */
  readonly awaitApplied: (upTo: number) => Effect.Effect<void>
  /** Completes once the log has accepted the transaction with GTID seq `seq`. */
  readonly awaitSeq: (seq: number) => Effect.Effect<void>
  /** As awaitSeq, for at most `timeoutMs`: true once accepted, false when the time ran out. */
  readonly awaitSeqWithin: (seq: number, timeoutMs: number) => Effect.Effect<boolean>
  /**
   * Entries other than accepted Binlog and BinlogPart ones (master records, resignations, barriers,
   * rejections) as they are applied from now on (subscribe before proposing to see yours).
   */
  readonly applied: Effect.Effect<Stream.Stream<AppliedEntry>, never, import("effect").Scope.Scope>
  /**
   * Chosen and accepted binlog transactions (domain of the log) with seq >= fromSeq, in
   * order, contiguous, at most `limit` and about `maxBytes` (at least one), from those
   * applied so far.
   */
  readonly transactionsFrom: (fromSeq: number, limit: number, maxBytes?: number) => Effect.Effect<ReadonlyArray<LoggedTxn>, StorageError | LogCompacted>
  /**
   * The oldest log instance this node needs for a database whose next transaction is GTID
   * seq `nextSeq` (where that transaction, or its first part, is), and for its own restart
   * (the last snapshot written): the log must be kept from there.
   */
  readonly neededFor: (nextSeq: number) => number
  /**
   * Replaces the state with a peer's snapshot (a node the log left behind: see
   * PaxosLog.install, which the caller does next). The index of older transactions is
   * dropped: they are no longer in this node's log.
   */
  readonly install: (snapshot: ClusterSnapshot) => Effect.Effect<void>
  /**
   * The first transaction seq this node's log still holds, and the GTID of the one just
   * before it when known (after an install: the snapshot's last).
   */
  readonly logStart: Effect.Effect<{ readonly seq: number; readonly after: BinlogTxn["gtid"] | null }>
  /**
   * Proposes an entry and waits until this node has applied it: its outcome. `timing`, when
   * given, gets when the log reported the entry chosen and when its outcome was known.
   */
  readonly propose: (entry: ClusterEntry, timing?: ProposeTiming) => Effect.Effect<Outcome, ProposeError>
  /**
   * Fails once this node can no longer apply the log (an entry that cannot be applied, an
   * index write that failed); never completes otherwise. The node must stop: it applies
   * nothing more and its state is no longer current.
   */
  readonly stopped: Effect.Effect<never, ClusterStateError>
}

/** A snapshot as data on the wire (a peer's, for an install). */
export const ClusterSnapshotData = Schema.Struct({ state: ClusterStateData, appliedUpTo: Schema.Int })

/**
 * A chosen transaction as read from the log: its bytes as chunks, end to end (one for a
 * transaction in one entry; its parts and the rest for a large one, never joined).
 */
export interface LoggedTxn {
  readonly gtid: BinlogTxn["gtid"]
  readonly chunks: ReadonlyArray<Uint8Array>
  readonly size: number
  /** A large transaction: its leading bytes, `count` parts before `chunks`, each read from the log when asked for. */
  readonly parts?: { readonly count: number; readonly read: (part: number) => Effect.Effect<Uint8Array, StorageError | LogCompacted> } | undefined
}

const logged = (t: BinlogTxn): LoggedTxn => ({ gtid: t.gtid, chunks: [t.events], size: t.events.length })

/** Filled in by {@link ClusterStateShape.propose} (monotonic ms). */
export interface ProposeTiming {
  chosenAt: number
  appliedAt: number
}

export class ClusterState extends Context.Service<ClusterState, ClusterStateShape>()("phxmaria/ClusterState") {}

const SNAPSHOT_EVERY_MS = 1_000

/** Decoded transactions of the latest entries kept for binlog servers. */
const RECENT_ENTRY_BYTES = 4 * 1024 * 1024

/** Index entries put before the next snapshot at the latest once this many wait. */
const INDEX_FLUSH_ENTRIES = 1024

/** Outcomes of recently applied positions, for proposers whose answer came after the apply. */
const RECENT_OUTCOMES = 10_000

export const make = Effect.fnUntraced(function*(options: { readonly dir: string; readonly members: ReadonlyArray<number> }) {
  // Effects started from callbacks run with this layer's context: its logger above all.
  const context = yield* Effect.context<never>()
  const log = yield* PaxosLog
  const env = yield* Effect.acquireRelease(
    Effect.try({
      try: () => {
        mkdirSync(options.dir, { recursive: true, mode: 0o700 })
        // No fsync: everything here is derived from the Paxos log and replayed from it after a
        // crash (writes stay ordered, so a lost tail loses snapshot and index together).
        return open({ path: options.dir, encoding: "msgpack", compression: false, noSync: true })
      },
      catch: (cause) => new ClusterStateError({ operation: "open", cause })
    }),
    (e) => Effect.promise(() => e.close())
  )
  /**
   * Where each accepted Binlog entry sits in the log, by the GTID seq of its first
   * transaction: [instance, index], and where the first transaction's parts are when it has
   * any. The transactions themselves are read back from the Paxos log (one stored copy), for
   * a binlog server serving a replica from the past.
   */
  const entries = env.openDB<EntryAt, number>({ name: "binlog-entries", encoding: "msgpack" })
  /**
   * Index entries whose put is not committed yet (LMDB reads see only committed data).
   * They are put together with the snapshot (or once INDEX_FLUSH_ENTRIES wait), before it in
   * the same transaction: an index put costs no LMDB commit of its own.
   */
  const stopped = { failure: undefined as ClusterStateError | undefined, signal: Deferred.makeUnsafe<never, ClusterStateError>() }
  const stop = (failure: ClusterStateError): void => {
    if (stopped.failure !== undefined) return
    stopped.failure = failure
    Effect.runForkWith(context)(Effect.logError("the cluster state has stopped: this node can no longer apply the log", failure))
    Deferred.doneUnsafe(stopped.signal, Effect.fail(failure))
  }
  const pending = new Map<number, EntryAt>()
  let unflushed: Array<readonly [number, EntryAt]> = []
  const flushIndex = () => {
    const puts = unflushed
    unflushed = []
    for (const [first, at] of puts) {
      void entries.put(first, at).then(
        () => {
          if (pending.get(first) === at) pending.delete(first)
        },
        // A gap here would look like divergence after a restart: stop loudly instead.
        (cause) => stop(new ClusterStateError({ operation: `index binlog entry ${first}`, cause }))
      )
    }
  }
  /**
   * The transactions of the latest accepted Binlog entries, decoded, by first seq (bounded
   * by bytes): a binlog server keeping up with the log reads them from here, one lagging
   * behind reads the log.
   */
  const recentEntries = new Map<number, ReadonlyArray<BinlogTxn>>()
  const recentEntryOrder = new Fifo<number>()
  let recentEntryBytes = 0
  const remember = (txns: ReadonlyArray<BinlogTxn>) => {
    const first = txns[0]!.gtid.seq
    if (!recentEntries.has(first)) recentEntryOrder.push(first)
    recentEntries.set(first, txns)
    recentEntryBytes += txns.reduce((n, t) => n + t.events.length, 0)
    while (recentEntryBytes > RECENT_ENTRY_BYTES && recentEntries.size > 1) {
      const oldest = recentEntryOrder.shift()!
      const old = recentEntries.get(oldest)
      recentEntries.delete(oldest)
      if (old !== undefined) recentEntryBytes -= old.reduce((n, t) => n + t.events.length, 0)
    }
  }
  const stored = env.get("snapshot") as ClusterSnapshot | undefined
  let current: ClusterSnapshot = stored !== undefined
    ? { ...stored, state: { ...stored.state, partial: stored.state.partial ?? null } }
    : { state: initialClusterState(options.members), appliedUpTo: 0 }
  /** Set only when the master record changes. */
  const masterRef = yield* SubscriptionRef.make<ClusterSnapshot>(current)
  const hub = yield* PubSub.unbounded<AppliedEntry>()
  let lastWrite = -Infinity
  /** Where the last snapshot written resumes: a restart replays the log from there. */
  let persistedUpTo = current.appliedUpTo
  const writeSnapshot = (snapshot: ClusterSnapshot) => {
    persistedUpTo = snapshot.appliedUpTo
    return env.put("snapshot", snapshot)
  }
  yield* Effect.addFinalizer(() => Effect.promise(() => {
    flushIndex()
    return writeSnapshot(current)
  }))
  /** The first transaction still in the log (older ones were compacted, or skipped by an install). */
  let logStartSeq = 0
  let logStart = 0
  let logStartsAfter: BinlogTxn["gtid"] | null = null

  /**
   * Entries proposed here, by their encoded bytes: when this node leads, the chosen value
   * holds those very bytes, and applying them needs no decoding.
   */
  const proposedHere = new WeakMap<Uint8Array, ClusterEntry>()

  /**
   * Waiting for progress: a callback per waiter, called once the snapshot that satisfies it
   * is applied. A binlog server that keeps up waits once per transaction, so this is a plain
   * callback and timer, not a Deferred raced against a sleep (two fibers forked and one
   * interrupted per transaction: a tenth of a replica agent's CPU). Waiters wake after the
   * I/O callbacks of this turn of the event loop: catch-up replies apply many instances,
   * and a binlog server woken at the first would read them one at a time (bench:catchup
   * 41-50 s against 35-38 s).
   */
  let progressWaiters: Array<{ readonly done: (s: ClusterSnapshot) => boolean; readonly wake: () => void }> = []
  const wakeProgress = (snapshot: ClusterSnapshot) => {
    const ready: typeof progressWaiters = []
    const waiting: typeof progressWaiters = []
    for (const w of progressWaiters) (w.done(snapshot) ? ready : waiting).push(w)
    if (ready.length === 0) return
    progressWaiters = waiting
    setImmediate(() => {
      for (const w of ready) w.wake()
    })
  }
  const awaitProgress = (done: (s: ClusterSnapshot) => boolean, timeoutMs?: number): Effect.Effect<boolean> =>
    Effect.callback<boolean>((resume) => {
      if (done(current)) return resume(Effect.succeed(true))
      let timer: ReturnType<typeof setTimeout> | undefined
      let settled = false
      /** Done waiting (answered, timed out or interrupted): no timer, no wake-up left. */
      const detach = () => {
        settled = true
        if (timer !== undefined) clearTimeout(timer)
        progressWaiters = progressWaiters.filter((x) => x !== w)
      }
      const settle = (arrived: boolean) => {
        if (settled) return
        detach()
        resume(Effect.succeed(arrived))
      }
      const w = { done, wake: () => settle(true) }
      progressWaiters.push(w)
      if (timeoutMs !== undefined) timer = setTimeout(() => settle(false), timeoutMs)
      return Effect.sync(detach)
    })
  const awaitApplied = (upTo: number) => Effect.asVoid(awaitProgress((s) => s.appliedUpTo >= upTo))
  const seqAccepted = (seq: number) => (s: ClusterSnapshot) => (s.state.lastGtid?.seq ?? 0) >= seq
  const awaitSeq = (seq: number) => Effect.asVoid(awaitProgress(seqAccepted(seq)))
  const awaitSeqWithin = (seq: number, timeoutMs: number) => awaitProgress(seqAccepted(seq), timeoutMs)
  const waiters = new Map<string, Deferred.Deferred<Outcome>>()
  const recent = new Map<string, Outcome>()
  const recentOrder = new Fifo<string>()

  const settle = (key: string, outcome: Outcome) => {
    if (!recent.has(key)) recentOrder.push(key)
    recent.set(key, outcome)
    if (recent.size > RECENT_OUTCOMES) recent.delete(recentOrder.shift()!)
    const w = waiters.get(key)
    if (w !== undefined) {
      waiters.delete(key)
      Deferred.doneUnsafe(w, Effect.succeed(outcome))
    }
  }

  /**
   * Applies one chosen instance, synchronously as the log learns it (PaxosLog.follow): the
   * outcome is known by the time the proposer hears its entry was chosen.
   */
  const apply = (chosen: ChosenEntry): void => {
    if (stopped.failure !== undefined) return
    try {
      applyChosen(chosen)
    } catch (cause) {
      // The node cannot serve without applying the log: never silent, never half-applied.
      stop(new ClusterStateError({ operation: `apply instance ${chosen.instance}`, cause }))
    }
  }
  const applyChosen = (chosen: ChosenEntry): void => {
    if (chosen.instance < current.appliedUpTo) return // applied already (an install went past it)
    if (chosen.instance > current.appliedUpTo) {
      throw new Error(`the log skipped from instance ${current.appliedUpTo} to ${chosen.instance} (compacted): this node needs an install`)
    }
    const before = current.state
    let state = before
    const applied: Array<AppliedEntry> = []
    chosen.value.values.forEach((bytes, index) => {
      const decoded = proposedHere.get(bytes) ?? decodeEntry(bytes)
      const entry = decoded._tag === "Malformed" ? undefined : (decoded as ClusterEntry)
      const [next, outcome]: readonly [ClusterStateData, Outcome] = entry === undefined
        ? [state, { _tag: "Rejected", reason: decoded as Extract<typeof decoded, { _tag: "Malformed" }> }]
        : applyEntry(state, entry, [chosen.instance, index])
      // Written before the snapshot that includes it (one LMDB writer, in order), and
      // idempotent when a restart applies it again.
      if (entry?._tag === "Binlog" && outcome._tag === "Accepted") {
        const first = entry.txns[0]!.gtid.seq
        const parts = entry.txns[0]!.parts !== undefined ? state.partial?.at : undefined
        // A large transaction is read back from its parts, never kept whole in memory.
        if (parts === undefined) remember(entry.txns)
        // Readable from `pending` until LMDB has committed the put.
        const at: EntryAt = parts === undefined ? [chosen.instance, index] : [chosen.instance, index, parts]
        pending.set(first, at)
        unflushed.push([first, at])
      }
      state = next
      applied.push({ instance: chosen.instance, index, entry, outcome, state })
    })
    const snapshot: ClusterSnapshot = { state, appliedUpTo: chosen.instance + 1 }
    current = snapshot
    if (
      state.master !== before.master || state.masterVersion !== before.masterVersion || state.epoch !== before.epoch ||
      state.leaseMs !== before.leaseMs || state.members !== before.members
    ) Effect.runSyncWith(context)(SubscriptionRef.set(masterRef, snapshot))
    // The log links to the members it names (a new one is dialled and accepted).
    if (state.membership !== before.membership && state.membership !== undefined) Effect.runForkWith(context)(log.setAddresses(state.membership))
    if (progressWaiters.length > 0) wakeProgress(snapshot)
    // Written at most every SNAPSHOT_EVERY_MS (and at close), never awaited: after a
    // crash the log replays what the last write missed, and apply is deterministic.
    const now = performance.now()
    if (now - lastWrite >= SNAPSHOT_EVERY_MS) {
      lastWrite = now
      flushIndex()
      void writeSnapshot(snapshot)
    } else if (unflushed.length >= INDEX_FLUSH_ENTRIES) flushIndex()
    for (const a of applied) settle(`${a.instance}/${a.index}`, a.outcome)
    for (const a of applied) {
      if ((a.entry?._tag !== "Binlog" && a.entry?._tag !== "BinlogPart") || a.outcome._tag !== "Accepted") PubSub.publishUnsafe(hub, a)
    }
  }
  if (current.state.membership !== undefined) yield* log.setAddresses(current.state.membership)
  yield* log.follow(current.appliedUpTo, apply)

  const propose = (entry: ClusterEntry, timing?: ProposeTiming): Effect.Effect<Outcome, ProposeError> =>
    Effect.gen(function*() {
      const bytes = encodeEntry(entry)
      proposedHere.set(bytes, entry)
      // A lease renewal must not wait behind large binlog entries on a slow disk.
      const position = yield* log.propose(bytes, { urgent: entry._tag === "MasterLease" })
      if (timing !== undefined) timing.chosenAt = performance.now()
      const outcome = yield* outcomeAt(position)
      if (timing !== undefined) timing.appliedAt = performance.now()
      return outcome
    })

  /** The outcome of the entry at a chosen position, once this node has applied it. */
  const outcomeAt = (position: { readonly instance: number; readonly index: number }): Effect.Effect<Outcome> =>
    Effect.gen(function*() {
      const key = `${position.instance}/${position.index}`
      const known = recent.get(key)
      if (known !== undefined) return known
      const d = yield* Deferred.make<Outcome>()
      waiters.set(key, d)
      // Applied between the lookup and the registration: settle() ran already.
      const raced = recent.get(key)
      if (raced !== undefined) {
        waiters.delete(key)
        return raced
      }
      return yield* Deferred.await(d).pipe(Effect.onInterrupt(() => Effect.sync(() => waiters.delete(key))))
    })

  /** The accepted Binlog entry whose first transaction has seq <= `seq`, nearest to it. */
  const entryAtOrBefore = (seq: number): readonly [number, EntryAt] | undefined => {
    let best: readonly [number, EntryAt] | undefined
    for (const [first, at] of pending) if (first <= seq && (best === undefined || first > best[0])) best = [first, at]
    for (const { key, value } of entries.getRange({ start: seq, end: -1, reverse: true, limit: 1 })) {
      if (best === undefined || key > best[0]) best = [key, value]
    }
    return best
  }

  /** Accepted entries from the one starting at `first` on, in seq order: [first seq, [instance, index]]. */
  const entriesFrom = (first: number, limit: number): Array<readonly [number, EntryAt]> => {
    const out = new Map<number, EntryAt>()
    for (const { key, value } of entries.getRange({ start: first, limit })) out.set(key, value)
    for (const [k, v] of pending) if (k >= first) out.set(k, v)
    return [...out].sort((a, b) => a[0] - b[0]).slice(0, limit)
  }

  /** Whole recent entries from the one starting at `fromSeq` (a binlog server keeping up). */
  const recentFrom = (fromSeq: number, limit: number, maxBytes: number): Array<LoggedTxn> | undefined => {
    let txns = recentEntries.get(fromSeq)
    if (txns === undefined) return undefined
    const out: Array<LoggedTxn> = []
    let bytes = 0
    while (txns !== undefined) {
      const size = txns.reduce((n, t) => n + t.events.length, 0)
      if (out.length > 0 && (bytes + size > maxBytes || out.length + txns.length > limit)) break
      for (const t of txns) out.push(logged(t))
      bytes += size
      txns = recentEntries.get(txns[txns.length - 1]!.gtid.seq + 1)
    }
    return out
  }

  /** A large transaction: its own bytes, and its parts to be read from the log one by one. */
  const withParts = (txn: BinlogTxn, parts: ReadonlyArray<LogPosition>): LoggedTxn => ({
    gtid: txn.gtid,
    chunks: [txn.events],
    size: txn.events.length,
    parts: {
      count: parts.length,
      read: (part): Effect.Effect<Uint8Array, StorageError | LogCompacted> =>
        Effect.gen(function*() {
          const [instance, index] = parts[part]!
          const entry = decodeEntry((yield* log.valueAt(instance)).values[index] ?? new Uint8Array(0))
          // The index said a part is here: anything else is a broken invariant.
          if (entry._tag !== "BinlogPart" || entry.gtid.seq !== txn.gtid.seq || entry.part !== part) {
            return yield* Effect.die(new Error(`no part ${part} of ${txn.gtid.seq} at ${instance}/${index}`))
          }
          return entry.bytes
        })
    }
  })

  const transactionsFrom = (fromSeq: number, limit: number, maxBytes = Infinity) =>
    Effect.gen(function*() {
      // Nothing accepted there yet: a binlog server that keeps up asks this after every
      // transaction, and the index lookups below cost a replica's agent ~60 us each time.
      if (fromSeq > (current.state.lastGtid?.seq ?? 0)) return []
      const recent = recentFrom(fromSeq, limit, maxBytes)
      if (recent !== undefined) return recent
      if (fromSeq < logStartSeq) return yield* new LogCompacted({ seq: fromSeq, compactedBelow: logStart })
      const out: Array<LoggedTxn> = []
      const start = entryAtOrBefore(fromSeq)
      if (start === undefined) return out
      let next = fromSeq
      let bytes = 0
      for (const [first, [instance, index, parts]] of entriesFrom(start[0], Math.max(4, limit))) {
        let txns: ReadonlyArray<BinlogTxn> | undefined = recentEntries.get(first)
        if (txns === undefined) {
          const value = yield* log.valueAt(instance)
          const entry = decodeEntry(value.values[index] ?? new Uint8Array(0))
          if (entry._tag !== "Binlog") break
          txns = entry.txns
        }
        for (const t of txns) {
          if (t.gtid.seq < next) continue
          const size = t.parts === undefined ? t.events.length : Infinity
          // Contiguous from fromSeq only, and within the bounds (at least one transaction).
          if (t.gtid.seq !== next || out.length >= limit || (out.length > 0 && bytes + size > maxBytes)) return out
          const one = parts !== undefined && t.parts !== undefined ? withParts(t, parts) : logged(t)
          out.push(one)
          bytes += one.size
          next++
        }
      }
      return out
    })

  const neededFor = (nextSeq: number): number => {
    let need = persistedUpTo
    const firstPart = current.state.partial?.at[0]
    if (firstPart !== undefined) need = Math.min(need, firstPart[0])
    if (nextSeq <= (current.state.lastGtid?.seq ?? 0)) {
      const found = entryAtOrBefore(nextSeq)
      // Not found: compacted already; the database needs a rebuild, not the log kept.
      if (found !== undefined) need = Math.min(need, found[1][0], found[1][2]?.[0]?.[0] ?? Infinity)
    }
    return need
  }

  /** Index entries of compacted instances go, and transactions from before the log's start are refused. */
  const prune = (compactedBelow: number) =>
    Effect.promise(async () => {
      if (compactedBelow <= logStart) return
      logStart = compactedBelow
      const kept = (at: EntryAt) => at[0] >= compactedBelow && (at[2] === undefined || at[2][0]![0] >= compactedBelow)
      let start: number | undefined
      const doomed: Array<number> = []
      for (const { key, value } of entries.getRange({})) {
        if (kept(value)) {
          start = key
          break
        }
        doomed.push(key)
      }
      for (const [first, at] of pending) {
        if (!kept(at)) pending.delete(first)
        else if (start === undefined || first < start) start = first
      }
      if (doomed.length > 0) await entries.transaction(() => doomed.forEach((key) => entries.remove(key)))
      // Nothing indexed is left: the log holds no transaction older than the next one.
      const startSeq = start ?? (current.state.lastGtid?.seq ?? 0) + 1
      if (startSeq > logStartSeq) {
        logStartSeq = startSeq
        logStartsAfter = null
      }
    })
  yield* log.status.pipe(
    Effect.flatMap((s) => prune(s.compactedBelow)),
    Effect.repeat(Schedule.spaced("5 seconds")),
    forkScopedLogged("cluster state: pruning the index of compacted instances")
  )
  // Without a database above (neededFor unused), the log is kept for this node's own restart.
  yield* log.retain(() => persistedUpTo)

  const install = (snapshot: ClusterSnapshot) =>
    Effect.gen(function*() {
      pending.clear()
      unflushed = []
      recentEntries.clear()
      recentEntryOrder.clear()
      recentEntryBytes = 0
      current = snapshot
      yield* Effect.promise(() => entries.clearAsync())
      yield* Effect.promise(() => writeSnapshot(snapshot))
      logStart = snapshot.appliedUpTo
      logStartSeq = (snapshot.state.lastGtid?.seq ?? 0) + 1
      logStartsAfter = snapshot.state.lastGtid
      yield* SubscriptionRef.set(masterRef, snapshot)
      if (snapshot.state.membership !== undefined) yield* log.setAddresses(snapshot.state.membership)
      wakeProgress(snapshot)
    })

  return ClusterState.of({
    neededFor,
    install,
    logStart: Effect.sync(() => ({ seq: Math.max(logStartSeq, 1), after: logStartsAfter })),
    current: Effect.sync(() => current),
    transactionsFrom,
    masterChanges: SubscriptionRef.changes(masterRef),
    awaitApplied,
    awaitSeq,
    awaitSeqWithin,
    applied: Effect.map(PubSub.subscribe(hub), Stream.fromSubscription),
    propose,
    stopped: Deferred.await(stopped.signal)
  })
})

/** Where an accepted Binlog entry is: [instance, index, the positions of its first transaction's parts]. */
type EntryAt = readonly [number, number] | readonly [number, number, ReadonlyArray<LogPosition>]

export const layer = (options: { readonly dir: string; readonly members: ReadonlyArray<number> }) =>
  Layer.effect(ClusterState, make(options))
