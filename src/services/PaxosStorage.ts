/**
 * Durable Paxos state on LMDB: the acceptor's promise and accepts, the proposer's last
 * round, and the chosen log. `persist` resolves only after the commit is synced to disk,
 * so the driver can send the replies that depend on it.
 */
import { Context, Data, Effect, Layer } from "effect"
import { open, type Database, type RootDatabase } from "lmdb"
import { mkdirSync } from "node:fs"
import type { DurableState, PersistRecord } from "../domain/paxos/core.js"
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
  /** The durable state a restarting node resumes from (`memoryWindow` chosen entries below the prefix). */
  readonly load: (memoryWindow: number) => Effect.Effect<DurableState, StorageError>
  /** Completes once the records are synced. Writes may overlap; they complete in call order. */
  readonly persist: (records: ReadonlyArray<PersistRecord>) => Effect.Effect<void, StorageError>
  /** Chosen entries in [from, from + count) that this node has, in order. */
  readonly readChosen: (from: number, count: number) => Effect.Effect<ReadonlyArray<ChosenEntry>, StorageError>
}

export class PaxosStorage extends Context.Service<PaxosStorage, PaxosStorageShape>()("phxmaria/PaxosStorage") {}

interface Meta {
  readonly promised: Ballot
  readonly proposerRound: number
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
  const accepted: Database<{ ballot: Ballot; value: PaxosValue }, number> = env.openDB("accepted", { encoding: "msgpack" })
  const chosen: Database<PaxosValue, number> = env.openDB("chosen", { encoding: "msgpack" })

  // Kept in memory: writes may overlap, so a read-modify-write of the stored copy could
  // merge with a value that is not committed yet.
  let currentMeta: Meta = meta.get("acceptor") ?? { promised: ZeroBallot, proposerRound: 0 }

  const persist = (records: ReadonlyArray<PersistRecord>) => {
    if (records.length === 0) return Effect.void
    return attempt("persist", async () => {
      // Puts made in one turn of the event loop commit as one LMDB transaction.
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
            last = accepted.put(r.instance, { ballot: r.ballot, value: r.value })
            break
          case "Chosen":
            last = chosen.put(r.instance, r.value)
            break
        }
      }
      if (metaChanged) last = meta.put("acceptor", currentMeta)
      await last
    })
  }

  const load = (memoryWindow: number) =>
    attempt("load", (): DurableState => {
      const m = currentMeta
      let chosenUpTo = 0
      for (const key of chosen.getKeys({ start: 0 })) {
        if (key !== chosenUpTo) break
        chosenUpTo++
      }
      const chosenEntries: Array<ChosenEntry> = []
      for (const { key, value } of chosen.getRange({ start: Math.max(0, chosenUpTo - memoryWindow) })) {
        chosenEntries.push({ instance: key, value })
      }
      const acceptedEntries: Array<DurableState["accepted"][number]> = []
      for (const { key, value } of accepted.getRange({ start: chosenUpTo })) {
        acceptedEntries.push({ instance: key, ballot: value.ballot, value: value.value })
      }
      return { promised: m.promised, proposerRound: m.proposerRound, accepted: acceptedEntries, chosen: chosenEntries, chosenUpTo }
    })

  const readChosen = (from: number, count: number) =>
    attempt("readChosen", () => {
      const out: Array<ChosenEntry> = []
      for (const { key, value } of chosen.getRange({ start: from, end: from + count })) out.push({ instance: key, value })
      return out
    })

  return PaxosStorage.of({ load, persist, readChosen })
})

export const layer = (dir: string): Layer.Layer<PaxosStorage, StorageError> => Layer.effect(PaxosStorage, make(dir))
