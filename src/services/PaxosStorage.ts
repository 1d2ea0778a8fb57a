/**
 * Durable Paxos state on LMDB: the acceptor's promise, the proposer's last round, and the
 * log, one value per instance (what this node accepted, or learned chosen). A value is
 * stored once: learning that the accepted value was chosen writes nothing but the chosen
 * prefix, a hint that travels with the next write (core.ts, PersistRecord). Writes resolve
 * only after their commit is synced, so the driver can send what depends on them.
 */
import { Context, Data, Effect, Layer } from "effect"
import { open, type Database, type RootDatabase } from "lmdb"
import { mkdirSync } from "node:fs"
import { type DurableState, type PersistRecord, valueBytes } from "../domain/paxos/core.js"
import { type Ballot, type ChosenEntry, type PaxosValue, ZeroBallot } from "../domain/paxos/messages.js"

export class StorageError extends Data.TaggedError("StorageError")<{
  readonly operation: string
  readonly cause: unknown
}> {
  override get message(): string {
    return `storage ${this.operation} failed: ${String(this.cause)}`
  }
}

export interface PaxosStorageShape {
  /**
   * The durable state a restarting node resumes from, with the newest chosen entries below
   * the prefix up to `memoryWindow` of them and `memoryWindowBytes` (at least one).
   */
  readonly load: (memoryWindow: number, memoryWindowBytes?: number) => Effect.Effect<DurableState, StorageError>
  /**
   * Starts writing now (joining this turn's LMDB commit); the promise settles once the
   * commit is synced, in call order, and rejects with a {@link StorageError}. `chosenUpTo`
   * is the chosen prefix known now, kept as a hint with the write.
   */
  readonly write: (records: ReadonlyArray<PersistRecord>, chosenUpTo: number) => Promise<void>
  /** The same as an Effect. */
  readonly persist: (records: ReadonlyArray<PersistRecord>, chosenUpTo?: number) => Effect.Effect<void, StorageError>
  /**
   * The stored values of [from, from + count), in order. Only for instances the caller
   * knows are chosen (below its chosen prefix), after the writes that made them so settled.
   */
  readonly readChosen: (from: number, count: number) => Effect.Effect<ReadonlyArray<ChosenEntry>, StorageError>
}

export class PaxosStorage extends Context.Service<PaxosStorage, PaxosStorageShape>()("phxmaria/PaxosStorage") {}

interface Meta {
  readonly promised: Ballot
  readonly proposerRound: number
  /** Every instance below it is chosen with its stored value (a hint: it may lag). */
  readonly chosenUpTo: number
}

/** One instance: the ballot it was accepted at, or null for a value learned chosen. */
interface LogEntry {
  readonly ballot: Ballot | null
  readonly value: PaxosValue
}

const attempt = <A>(operation: string, f: () => A | Promise<A>): Effect.Effect<A, StorageError> =>
  Effect.tryPromise({ try: async () => f(), catch: (cause) => new StorageError({ operation, cause }) })

/** Opens (creating if needed) the LMDB environment in `dir`; closed with the scope. */
export const make = Effect.fnUntraced(function*(dir: string) {
  const env: RootDatabase = yield* Effect.acquireRelease(
    attempt("open", () => {
      mkdirSync(dir, { recursive: true })
      // overlappingSync off: a write's promise resolves only once its commit is fsynced.
      // (Measured here: overlapping syncs made commit-to-durable latency worse, not better.)
      return open({ path: dir, overlappingSync: false, encoding: "msgpack", compression: false })
    }),
    (e) => Effect.promise(() => e.close())
  )
  const meta: Database<Meta, string> = env.openDB("meta", { encoding: "msgpack" })
  const log: Database<LogEntry, number> = env.openDB("log", { encoding: "msgpack" })

  // Kept in memory: writes may overlap, so a read-modify-write of the stored copy could
  // merge with a value that is not committed yet.
  const stored = meta.get("acceptor")
  let currentMeta: Meta = { promised: ZeroBallot, proposerRound: 0, chosenUpTo: 0, ...stored }

  /** Puts made in one turn of the event loop commit as one LMDB transaction. */
  const put = (records: ReadonlyArray<PersistRecord>, chosenUpTo: number): Promise<unknown> => {
    let metaChanged = false
    let last: Promise<boolean> | undefined
    for (const r of records) {
      switch (r._tag) {
        case "Promised":
          currentMeta = { ...currentMeta, promised: r.ballot }
          metaChanged = true
          break
        case "ProposerRound":
          currentMeta = { ...currentMeta, proposerRound: r.round }
          metaChanged = true
          break
        case "Accepted":
          last = log.put(r.instance, { ballot: r.ballot, value: r.value })
          break
        case "Chosen":
          last = log.put(r.instance, { ballot: null, value: r.value })
          break
      }
    }
    if (chosenUpTo > currentMeta.chosenUpTo && (metaChanged || last !== undefined)) {
      currentMeta = { ...currentMeta, chosenUpTo }
      metaChanged = true
    }
    if (metaChanged) last = meta.put("acceptor", currentMeta)
    return last ?? Promise.resolve()
  }

  const write = (records: ReadonlyArray<PersistRecord>, chosenUpTo: number): Promise<void> => {
    try {
      return put(records, chosenUpTo).then(
        () => undefined,
        (cause) => Promise.reject(new StorageError({ operation: "persist", cause }))
      )
    } catch (cause) {
      return Promise.reject(new StorageError({ operation: "persist", cause }))
    }
  }

  const persist = (records: ReadonlyArray<PersistRecord>, chosenUpTo = 0) =>
    records.length === 0 ? Effect.void : attempt("persist", () => put(records, chosenUpTo))

  const load = (memoryWindow: number, memoryWindowBytes = Infinity) =>
    attempt("load", (): DurableState => {
      const m = currentMeta
      // Below the hint everything is chosen; past it, values learned chosen extend the prefix.
      let chosenUpTo = m.chosenUpTo
      for (const { key, value } of log.getRange({ start: chosenUpTo })) {
        if (key !== chosenUpTo || value.ballot !== null) break
        chosenUpTo++
      }
      let windowStart = chosenUpTo
      let bytes = 0
      for (const { key, value } of log.getRange({ start: chosenUpTo - 1, end: -1, reverse: true, limit: memoryWindow })) {
        bytes += valueBytes(value.value)
        if (windowStart < chosenUpTo && bytes > memoryWindowBytes) break
        windowStart = key
      }
      const chosen: Array<ChosenEntry> = []
      const accepted: Array<DurableState["accepted"][number]> = []
      for (const { key, value } of log.getRange({ start: windowStart })) {
        if (key < chosenUpTo || value.ballot === null) chosen.push({ instance: key, value: value.value })
        else accepted.push({ instance: key, ballot: value.ballot, value: value.value })
      }
      return { promised: m.promised, proposerRound: m.proposerRound, accepted, chosen, chosenUpTo }
    })

  const readChosen = (from: number, count: number) =>
    attempt("readChosen", () => {
      const out: Array<ChosenEntry> = []
      for (const { key, value } of log.getRange({ start: from, end: from + count })) out.push({ instance: key, value: value.value })
      return out
    })

  return PaxosStorage.of({ load, write, persist, readChosen })
})

export const layer = (dir: string): Layer.Layer<PaxosStorage, StorageError> => Layer.effect(PaxosStorage, make(dir))
