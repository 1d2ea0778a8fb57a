/**
 * Durable Paxos state: the acceptor's promise, the proposer's last round, and the log, one
 * value per instance (what this node accepted, or learned chosen).
 *
 * The bytes live once, in a write-ahead log of checksummed frames (domain/paxos/walFrame.ts)
 * in segment files that are zero-filled before use: a write is one `pwritev` on a file
 * opened O_DSYNC, covering blocks that already exist, so it costs one device flush and no
 * file-system journal commit (LMDB's own commit costs two flushes, and a third when its
 * file grows: measured here 0.37 ms against 1.9 ms with three nodes sharing a disk).
 * Everything written in one turn of the event loop, and whatever arrives while a write is
 * in flight, goes out as one write (group commit); writes settle in order.
 *
 * An LMDB index (no fsync of its own) maps instances to frames and keeps the acceptor
 * state, with the log position it covers; at start the log is replayed into it from
 * there. The index survives a process crash (the OS holds its pages) but not an OS crash,
 * so after a reboot it is rebuilt from the log (the boot id tells). Learning that the
 * accepted value was chosen writes nothing but the chosen-prefix hint with the next write
 * (core.ts, PersistRecord).
 *
 * Compaction deletes whole segments from the oldest on, once every instance in them is
 * below the point the caller says nobody needs any more, keeping a tail of the newest
 * bytes and seconds. Before a segment goes, a Checkpoint frame in the current segment
 * restates what safety needs from everything before it: the promise, the proposer's last
 * round, the chosen prefix and where the log now starts. A replay (after a reboot) that
 * begins at the oldest surviving segment therefore misses nothing.
 */
import { Context, Data, Effect, Layer } from "effect"
import { open, type Database, type RootDatabase } from "lmdb"
import * as fs from "node:fs"
import { join } from "node:path"
import { type ConfigEntry, type DurableState, type PersistRecord, withConfig } from "../../domain/paxos/core.js"
import { type Ballot, type ChosenEntry, compareBallot, type PaxosValue, ZeroBallot } from "../../domain/paxos/messages.js"
import { bytesAfter } from "../../domain/mysql/packet.js"
import { encodeWalFrame, readWalFrame, scanWalFrames, WAL_FRAME_HEADER } from "../../domain/paxos/walFrame.js"
import type { Scattered } from "../../domain/wire/scatter.js"

export class StorageError extends Data.TaggedError("StorageError")<{
  readonly operation: string
  readonly cause: unknown
}> {
  override get message(): string {
    return `storage ${this.operation} failed: ${this.cause instanceof Error ? this.cause.message : String(this.cause)}`
  }
}

export interface PaxosStorageShape {
  /**
   * The durable state a restarting node resumes from, with the newest chosen entries below
   * the prefix up to `memoryWindow` of them and `memoryWindowBytes` (at least one).
   */
  readonly load: (memoryWindow: number, memoryWindowBytes?: number) => Effect.Effect<DurableState, StorageError>
  /**
   * Starts writing (group commit with whatever else is written meanwhile); the promise
   * settles once the records are on disk, in call order, and rejects with a
   * {@link StorageError}. `chosenUpTo` is the chosen prefix known now, kept as a hint.
   */
  readonly write: (records: ReadonlyArray<PersistRecord>, chosenUpTo: number) => Promise<void>
  /** The same as an Effect. */
  readonly persist: (records: ReadonlyArray<PersistRecord>, chosenUpTo?: number) => Effect.Effect<void, StorageError>
  /**
   * The stored values of [from, from + count), in order, at most about `maxBytes` (at
   * least one). Only for instances the caller knows are chosen (below its chosen prefix),
   * after the writes that made them so settled.
   */
  readonly readChosen: (from: number, count: number, maxBytes?: number) => Effect.Effect<ReadonlyArray<ChosenEntry>, StorageError>
  /**
   * Deletes the oldest segments whose instances are all below `below` (which must be chosen
   * here), as long as the newer segments keep at least `retainBytes`, or the segment is
   * older than `retainMs` (both 0: delete whatever `below` allows). Returns where the log
   * now starts: nothing below it can be read.
   */
  readonly compact: (policy: CompactionPolicy) => Effect.Effect<number, StorageError>
  /** The bytes the log's segment files take on disk, their count, and where the log starts. */
  readonly usage: Effect.Effect<StorageUsage>
}

export interface CompactionPolicy {
  readonly below: number
  readonly retainBytes: number
  readonly retainMs: number
}

export interface StorageUsage {
  readonly bytes: number
  readonly segments: number
  readonly compactedBelow: number
}

export class PaxosStorage extends Context.Service<PaxosStorage, PaxosStorageShape>()("phxmaria/PaxosStorage") {}

export interface PaxosStorageOptions {
  /** Size of a log segment file; default 64 MiB (a larger write gets a segment of its own). */
  readonly segmentBytes?: number
  /** The machine's boot id; default /proc/sys/kernel/random/boot_id (tests pretend a reboot). */
  readonly bootId?: string
}

interface Meta {
  readonly promised: Ballot
  readonly proposerRound: number
  /** Every instance below it is chosen with its stored value (a hint: it may lag). */
  readonly chosenUpTo: number
  /** Nothing below it is stored any more (compacted, or skipped by an Install). */
  readonly compactedBelow?: number
  /** Member sets learned from the log (Configured, Installed); absent: only the founding one. */
  readonly configs?: ReadonlyArray<ConfigEntry>
}

/** Where the index has caught up to in the log. */
interface IndexMeta extends Meta {
  readonly segment: number
  readonly offset: number
  /** The boot the index was last written in: after a reboot it may be torn. */
  readonly bootId: string
  /** The highest instance with a frame in each segment (what compaction goes by). */
  readonly segmentMax?: Readonly<Record<number, number>>
}

/** One instance in the index: its frame, and the ballot it was accepted at (null: learned chosen). */
type Location = readonly [segment: number, offset: number, length: number, ballot: Ballot | null]

/** What a frame holds: a record, the chosen-prefix hint, or a checkpoint written before a compaction. */
type WalEntry =
  | PersistRecord
  | { readonly _tag: "ChosenUpTo"; readonly upTo: number }
  | ({ readonly _tag: "Checkpoint" } & Required<Omit<Meta, "configs">> & Pick<Meta, "configs">)

const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
const REPLAY_CHUNK_BYTES = 4 * 1024 * 1024

/** The payload length a frame header announces plus its header (0: the end), undefined if cut short. */
const readWalFrameLength = (bytes: Uint8Array): number | undefined => {
  if (bytes.length < WAL_FRAME_HEADER) return undefined
  const length = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true)
  return length === 0 ? 0 : length + WAL_FRAME_HEADER
}
const ZEROS = Buffer.alloc(1024 * 1024)
/** Zero buffers written by one call while a segment is filled. */
const ZERO_RUN = 16

/** How long index updates wait to be put together, and how many may wait. */
const INDEX_FLUSH_MS = 200
const INDEX_FLUSH_ENTRIES = 1024

const segmentName = (n: number) => `${String(n).padStart(8, "0")}.wal`

const readBootId = (): string => {
  try {
    return fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim()
  } catch {
    return "unknown"
  }
}

const attempt = <A>(operation: string, f: () => A | Promise<A>): Effect.Effect<A, StorageError> =>
  Effect.tryPromise({ try: async () => f(), catch: (cause) => cause instanceof StorageError ? cause : new StorageError({ operation, cause }) })

/** Zero-fills a new segment file of `bytes`, makes it and its directory entry durable. */
const createSegment = async (dir: string, n: number, bytes: number): Promise<void> => {
  const path = join(dir, segmentName(n))
  const tmp = `${path}.tmp`
  const fh = await fs.promises.open(tmp, "w", 0o600)
  try {
    // The same zero buffer many times a call: a few calls (each a trip through the event
    // loop, slow on a busy agent) instead of one per MiB.
    for (let at = 0; at < bytes;) {
      const count = Math.min(ZERO_RUN, Math.ceil((bytes - at) / ZEROS.length))
      const run = Array.from({ length: count }, (_, i) => (i < count - 1 ? ZEROS : ZEROS.subarray(0, Math.min(ZEROS.length, bytes - at - i * ZEROS.length))))
      const { bytesWritten } = await fh.writev(run, at)
      if (bytesWritten <= 0) throw new Error(`writev wrote ${bytesWritten} bytes at ${at}`)
      at += bytesWritten
    }
    await fh.datasync()
  } finally {
    await fh.close()
  }
  await fs.promises.rename(tmp, path)
  const d = await fs.promises.open(dir, "r")
  try {
    await d.sync()
  } finally {
    await d.close()
  }
}

/** Opens (creating if needed) the storage in `dir`; closed with the scope. */
/**
 * Writes `buffers` at `position` with pwritev (segments are opened O_DSYNC: on disk when it
 * settles), again from where a short write stopped; at most 1024 buffers a call (IOV_MAX).
 */
const writeAll = async (fd: number, buffers: ReadonlyArray<Uint8Array>, position: number): Promise<void> => {
  let rest = buffers.filter((b) => b.length > 0)
  let at = position
  while (rest.length > 0) {
    const batch = rest.slice(0, 1024)
    const written = await new Promise<number>((resolve, reject) =>
      fs.writev(fd, batch as Array<NodeJS.ArrayBufferView>, at, (e, n) => (e === null ? resolve(n) : reject(e)))
    )
    if (written <= 0) throw new Error(`writev wrote ${written} bytes at ${at}`)
    at += written
    // Drop what was written (a short write may end inside a buffer).
    rest = bytesAfter(rest, written)
  }
}

export const make = Effect.fnUntraced(function*(dir: string, options: PaxosStorageOptions = {}) {
  // Effects started from callbacks run with this layer's context: its logger above all.
  const context = yield* Effect.context<never>()
  const segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES
  const walDir = join(dir, "wal")
  const indexDir = join(dir, "index")
  const bootId = options.bootId ?? readBootId()
  yield* attempt("open", () => fs.mkdirSync(walDir, { recursive: true, mode: 0o700 }))

  const openIndex = () => open({ path: indexDir, encoding: "msgpack", compression: false, noSync: true })
  const env: RootDatabase = yield* attempt("open", async () => {
    const e = openIndex()
    const m = e.openDB("meta", { encoding: "msgpack" }).get("index") as IndexMeta | undefined
    if (m === undefined || (m.bootId === bootId && m.segmentMax !== undefined)) return e
    // Written before a reboot: its pages may be torn (or by a version that did not track
    // what each segment holds, which compaction needs). Rebuilt from the log.
    await e.close()
    fs.rmSync(indexDir, { recursive: true, force: true })
    return openIndex()
  })
  yield* Effect.addFinalizer(() => Effect.promise(() => env.close()))
  const metaDb: Database<IndexMeta, string> = env.openDB("meta", { encoding: "msgpack" })
  const logDb: Database<Location, number> = env.openDB("log", { encoding: "msgpack" })

  // ---- segments -----------------------------------------------------------

  const fds = new Map<number, number>()
  yield* Effect.addFinalizer(() => Effect.sync(() => {
    for (const fd of fds.values()) fs.closeSync(fd)
    fds.clear()
  }))
  /** Writes go through a descriptor opened O_DSYNC: a write returns once it is on disk. */
  const fdOf = (n: number): number => {
    let fd = fds.get(n)
    if (fd === undefined) {
      fd = fs.openSync(join(walDir, segmentName(n)), fs.constants.O_RDWR | fs.constants.O_DSYNC)
      fds.set(n, fd)
    }
    return fd
  }
  const segments = (): Array<number> =>
    fs.readdirSync(walDir).flatMap((f) => (/^\d{8}\.wal$/.test(f) ? [Number(f.slice(0, 8))] : [])).sort((a, b) => a - b)
  const sizes = new Map<number, number>()
  const sizeOf = (n: number) => {
    let size = sizes.get(n)
    if (size === undefined) {
      size = fs.fstatSync(fdOf(n)).size
      sizes.set(n, size)
    }
    return size
  }
  const readBytes = (n: number, offset: number, length: number): Uint8Array => {
    const buf = Buffer.allocUnsafe(length)
    let done = 0
    while (done < length) {
      const r = fs.readSync(fdOf(n), buf, done, length - done, offset + done)
      if (r === 0) break
      done += r
    }
    return buf.subarray(0, done)
  }

  // ---- replay into the index ------------------------------------------------

  let meta: IndexMeta = metaDb.get("index") ?? {
    promised: ZeroBallot,
    proposerRound: 0,
    chosenUpTo: 0,
    segment: 0,
    offset: 0,
    bootId
  }

  /**
   * Index entries not yet committed to LMDB (reads see only committed data). They are put
   * every INDEX_FLUSH_MS (or once INDEX_FLUSH_ENTRIES wait), all in one LMDB transaction
   * off the main thread with the log position they reflect, which is where a replay after
   * a crash starts: so nothing can be missed, and a write costs no index work of its own.
   */
  const unindexed = new Map<number, Location>()
  const locationOf = (instance: number): Location | undefined => unindexed.get(instance) ?? logDb.get(instance)
  let lastIndexWrite: Promise<void> = Promise.resolve()
  /** Entries and meta changed since the last flush. */
  let unflushed: Array<readonly [number, Location]> = []
  let metaDirty = false
  let flushTimer: ReturnType<typeof setTimeout> | undefined
  const flushIndex = (): Promise<void> => {
    if (flushTimer !== undefined) clearTimeout(flushTimer)
    flushTimer = undefined
    if (unflushed.length === 0 && !metaDirty) return lastIndexWrite
    const puts = unflushed
    unflushed = []
    metaDirty = false
    for (const [instance, loc] of puts) void logDb.put(instance, loc).catch(onIndexFailure)
    // Same event-loop turn: one LMDB transaction with the puts above.
    lastIndexWrite = metaDb.put("index", meta).then(() => {
      for (const [instance, loc] of puts) if (unindexed.get(instance) === loc) unindexed.delete(instance)
    }, onIndexFailure)
    return lastIndexWrite
  }

  /**
   * Forgets index entries below `below` (compacted): those waiting here at once, the
   * committed ones off the main thread. A crash before that is harmless: reads and load
   * never look below the start, and the next compaction removes them again.
   */
  const dropIndexBelow = (below: number) => {
    for (const instance of [...unindexed.keys()]) if (instance < below) unindexed.delete(instance)
    unflushed = unflushed.filter(([instance]) => instance >= below)
    void logDb.transaction(() => {
      for (const key of logDb.getKeys({ end: below })) logDb.remove(key)
    }).catch(onIndexFailure)
  }

  /** Applies frames to the index, with the log position they end at. */
  const index = (placed: ReadonlyArray<{ readonly entry: WalEntry; readonly location: Location }>, segment: number, offset: number) => {
    let m: IndexMeta = { ...meta, segment, offset, bootId }
    if (m.segmentMax?.[segment] === undefined) m = { ...m, segmentMax: { ...m.segmentMax, [segment]: -1 } }
    let puts: Array<readonly [number, Location]> = []
    const startsAt = (upTo: number) => {
      if (upTo <= (m.compactedBelow ?? 0)) return
      m = { ...m, compactedBelow: upTo, chosenUpTo: Math.max(m.chosenUpTo, upTo) }
      puts = puts.filter(([instance]) => instance >= upTo)
    }
    const seen = (location: Location, instance: number) => {
      const max = m.segmentMax?.[location[0]]
      if (max === undefined || instance > max) m = { ...m, segmentMax: { ...m.segmentMax, [location[0]]: instance } }
    }
    for (const { entry, location } of placed) {
      switch (entry._tag) {
        case "Checkpoint":
          if (compareBallot(entry.promised, m.promised) > 0) m = { ...m, promised: entry.promised }
          if (entry.proposerRound > m.proposerRound) m = { ...m, proposerRound: entry.proposerRound }
          if (entry.chosenUpTo > m.chosenUpTo) m = { ...m, chosenUpTo: entry.chosenUpTo }
          // A checkpoint from before member sets carries none.
          if (entry.configs !== undefined) for (const c of entry.configs) m = { ...m, configs: withConfig(m.configs ?? [], c) }
          startsAt(entry.compactedBelow)
          break
        case "Installed":
          startsAt(entry.upTo)
          if (entry.configs !== undefined) m = { ...m, configs: [...entry.configs] }
          break
        case "Configured":
          m = { ...m, configs: withConfig(m.configs ?? [], entry.config) }
          break
        case "Promised":
          if (entry.ballot.round > m.promised.round || (entry.ballot.round === m.promised.round && entry.ballot.node > m.promised.node)) {
            m = { ...m, promised: entry.ballot }
          }
          break
        case "ProposerRound":
          if (entry.round > m.proposerRound) m = { ...m, proposerRound: entry.round }
          break
        case "ChosenUpTo":
          if (entry.upTo > m.chosenUpTo) m = { ...m, chosenUpTo: entry.upTo }
          break
        case "Accepted":
          seen(location, entry.instance)
          if (entry.instance >= (m.compactedBelow ?? 0)) puts.push([entry.instance, [location[0], location[1], location[2], entry.ballot]])
          break
        case "Chosen":
          seen(location, entry.instance)
          if (entry.instance >= (m.compactedBelow ?? 0)) puts.push([entry.instance, [location[0], location[1], location[2], null]])
          break
      }
    }
    if ((m.compactedBelow ?? 0) > (meta.compactedBelow ?? 0)) dropIndexBelow(m.compactedBelow!)
    meta = m
    metaDirty = true
    for (const put of puts) {
      unindexed.set(put[0], put[1])
      unflushed.push(put)
    }
    if (unflushed.length >= INDEX_FLUSH_ENTRIES) void flushIndex()
    else if (flushTimer === undefined) flushTimer = setTimeout(flushIndex, INDEX_FLUSH_MS).unref()
  }
  /** The index is a cache of the log: a failed write only costs a rebuild, but is said. */
  const onIndexFailure = (cause: unknown) => {
    Effect.runForkWith(context)(Effect.logError(`paxos storage: cannot update the index in ${indexDir} (it is rebuilt from the log at the next start)`, cause))
  }
  /** The index's own writes settle before it closes. */
  yield* Effect.addFinalizer(() => Effect.promise(() => flushIndex().then(() => metaDb.put("index", meta)).then(() => undefined, () => undefined)))

  /**
   * Indexes a segment's frames from `from` on, reading it in chunks; returns where its log
   * ends (`from` when there is nothing there).
   */
  const replaySegment = (n: number, from: number): number => {
    const size = sizeOf(n)
    const indexFrames = (frames: ReadonlyArray<{ readonly offset: number; readonly length: number; readonly value: unknown }>, base: number, end: number) =>
      index(frames.map((f) => ({ entry: f.value as WalEntry, location: [n, base + f.offset, f.length, null] as const })), n, end)
    let at = from
    while (at < size) {
      const chunk = readBytes(n, at, Math.min(REPLAY_CHUNK_BYTES, size - at))
      const { frames, end } = scanWalFrames(chunk)
      if (frames.length > 0) {
        indexFrames(frames, at, at + end)
        at += end
        if (end === chunk.length) continue
        // Stopped inside the chunk: a frame running past it is read next; else the log ends.
        const next = readWalFrameLength(chunk.subarray(end))
        if (next === undefined || (next > 0 && end + next > chunk.length)) continue
        return at
      }
      // Nothing whole at the start of the chunk: one frame larger than it, or the end.
      const length = readWalFrameLength(chunk)
      if (length === undefined || length === 0 || length <= chunk.length || at + length > size) return at
      const big = readWalFrame(readBytes(n, at, length), 0)
      if (big === undefined) return at
      indexFrames([big], at, at + length)
      at += length
    }
    return at
  }

  /** Where the next write goes. */
  let tail = yield* attempt("replay", () => {
    let at = { segment: meta.segment, offset: meta.offset }
    for (const n of segments()) {
      if (n < meta.segment) continue
      // Known to compaction even if it holds nothing (a spare left empty).
      if (meta.segmentMax?.[n] === undefined) {
        meta = { ...meta, segmentMax: { ...meta.segmentMax, [n]: -1 } }
        metaDirty = true
      }
      const from = n === meta.segment ? meta.offset : 0
      const end = replaySegment(n, from)
      if (end === from && n !== meta.segment) continue
      at = { segment: n, offset: end }
    }
    if (at.segment === 0) at = { segment: 1, offset: 0 }
    return at
  })
  // What the replay indexed is committed before anything reads the index.
  yield* Effect.promise(() => flushIndex())
  if (!fs.existsSync(join(walDir, segmentName(tail.segment)))) {
    yield* attempt("create segment", () => createSegment(walDir, tail.segment, segmentBytes))
    sizes.set(tail.segment, segmentBytes)
  }

  // ---- writing --------------------------------------------------------------

  interface Batch {
    readonly frames: ReadonlyArray<{ readonly entry: WalEntry; readonly frame: Scattered }>
    readonly resolve: () => void
    readonly reject: (e: StorageError) => void
  }
  let queued: Array<Batch> = []
  let writing = false
  let failed: StorageError | undefined
  /** The next segment, zero-filled ahead of need. */
  let spare: { readonly segment: number; readonly bytes: number; readonly ready: Promise<void> } | undefined

  const prepareSpare = (after: number, atLeast: number) => {
    const segment = after + 1
    const bytes = Math.max(segmentBytes, atLeast)
    const ready = createSegment(walDir, segment, bytes).then(() => {
      // A descriptor opened before is of the file just replaced (the replay after a stop
      // opens the empty next segment it left): writes through it would go to a deleted file.
      const stale = fds.get(segment)
      if (stale !== undefined) {
        fds.delete(segment)
        fs.closeSync(stale)
      }
      sizes.set(segment, bytes)
    })
    ready.catch(() => undefined)
    spare = { segment, bytes, ready }
    return spare
  }

  const flushQueued = async (): Promise<void> => {
    while (queued.length > 0 && failed === undefined) {
      const batches = queued
      queued = []
      const frames = batches.flatMap((b) => b.frames)
      const total = frames.reduce((n, f) => n + f.frame.length, 0)
      try {
        if (tail.offset + total > sizeOf(tail.segment)) {
          // Does not fit: the next segment (one of its own for a larger write; a spare too
          // small is left empty, and replay skips empty segments).
          let next = spare
          if (next === undefined || total > next.bytes) {
            if (next !== undefined) await next.ready.catch(() => undefined)
            next = prepareSpare(Math.max(tail.segment, next?.segment ?? 0), total)
          }
          spare = undefined
          await next.ready
          tail = { segment: next.segment, offset: 0 }
        }
        const placed: Array<{ readonly entry: WalEntry; readonly location: Location }> = []
        let at = 0
        for (const f of frames) {
          placed.push({ entry: f.entry, location: [tail.segment, tail.offset + at, f.frame.length, null] })
          at += f.frame.length
        }
        const fd = fdOf(tail.segment)
        const offset = tail.offset
        // The frames as they are, in one vectored write (no copy of a large value into a joined buffer).
        await writeAll(fd, frames.flatMap((f) => f.frame.parts), offset)
        tail = { segment: tail.segment, offset: offset + total }
        index(placed, tail.segment, tail.offset)
        // The next segment is made as soon as this one is in use: zero-filling 64 MiB took a
        // busy node longer than writing half a segment, and its writes waited for it (up
        // to 0.7 s each time, 7 s of a 20 s catch-up in bench:catchup).
        if (spare === undefined) prepareSpare(tail.segment, 0)
        for (const b of batches) b.resolve()
      } catch (cause) {
        failed = new StorageError({ operation: "persist", cause })
        for (const b of [...batches, ...queued]) b.reject(failed)
        queued = []
      }
    }
  }

  /** The last chosen-prefix hint written. */
  let hinted = meta.chosenUpTo

  // Closing waits for the write in flight and the segment being prepared; later writes fail.
  let closing = false
  let idle: (() => void) | undefined
  yield* Effect.addFinalizer(() =>
    Effect.promise(async () => {
      closing = true
      if (writing) await new Promise<void>((resolve) => (idle = resolve))
      await spare?.ready.catch(() => undefined)
    })
  )

  const write = (records: ReadonlyArray<PersistRecord>, chosenUpTo: number): Promise<void> => {
    if (failed !== undefined) return Promise.reject(failed)
    if (closing) return Promise.reject(new StorageError({ operation: "persist", cause: "the storage is closed" }))
    if (records.length === 0) return Promise.resolve()
    let frames: Array<{ readonly entry: WalEntry; readonly frame: Scattered }>
    try {
      frames = records.map((r) => ({ entry: r, frame: encodeWalFrame(r) }))
      if (chosenUpTo > hinted) {
        hinted = chosenUpTo
        const hint: WalEntry = { _tag: "ChosenUpTo", upTo: chosenUpTo }
        frames.push({ entry: hint, frame: encodeWalFrame(hint) })
      }
    } catch (cause) {
      return Promise.reject(new StorageError({ operation: "encode", cause }))
    }
    const written = enqueue(frames)
    // A read of these instances waits for this write (and the index it updates) first.
    const settled = written.catch(() => undefined)
    for (const r of records) {
      if (r._tag !== "Accepted" && r._tag !== "Chosen") continue
      const instance = r.instance
      inflight.set(instance, settled)
      void settled.then(() => {
        if (inflight.get(instance) === settled) inflight.delete(instance)
      })
    }
    return written
  }
  /** Queues frames for the writer; settles once they are on disk. */
  const enqueue = (frames: Batch["frames"]): Promise<void> => {
    if (failed !== undefined) return Promise.reject(failed)
    if (closing) return Promise.reject(new StorageError({ operation: "persist", cause: "the storage is closed" }))
    return new Promise<void>((resolve, reject) => {
      queued.push({ frames, resolve, reject })
      startWriting()
    })
  }
  /** Instances with a value being written, and the write's settlement. */
  const inflight = new Map<number, Promise<void>>()

  /**
   * One writer at a time; it starts after this turn of the event loop, so everything
   * written in the turn goes together, and takes what queued up meanwhile when it is done.
   */
  const startWriting = () => {
    if (writing || queued.length === 0) return
    writing = true
    setImmediate(() => {
      flushQueued().finally(() => {
        writing = false
        if (closing) {
          for (const b of queued) b.reject(new StorageError({ operation: "persist", cause: "the storage is closed" }))
          queued = []
          idle?.()
          return
        }
        startWriting()
      })
    })
  }

  const persist = (records: ReadonlyArray<PersistRecord>, chosenUpTo = 0) => attempt("persist", () => write(records, chosenUpTo))

  // ---- reading --------------------------------------------------------------

  /** The record stored at a location (checked: the index must point at this instance's frame). */
  const valueAt = (instance: number, loc: Location): PaxosValue => {
    const frame = readWalFrame(readBytes(loc[0], loc[1], loc[2]), 0)
    const entry = frame?.value as WalEntry | undefined
    if (entry === undefined || (entry._tag !== "Accepted" && entry._tag !== "Chosen") || entry.instance !== instance) {
      throw new StorageError({
        operation: "read",
        cause: `the index points instance ${instance} at a frame that does not hold it (segment ${loc[0]}, offset ${loc[1]}); remove ${indexDir} to rebuild it from the log`
      })
    }
    return entry.value
  }

  const load = (memoryWindow: number, memoryWindowBytes = Infinity) =>
    attempt("load", (): DurableState => {
      // Below the hint everything is chosen; past it, values learned chosen extend the prefix.
      const compactedBelow = meta.compactedBelow ?? 0
      let chosenUpTo = Math.max(meta.chosenUpTo, compactedBelow)
      for (const { key, value } of logDb.getRange({ start: chosenUpTo })) {
        if (key !== chosenUpTo || value[3] !== null) break
        chosenUpTo++
      }
      let windowStart = chosenUpTo
      let bytes = 0
      for (const { key, value } of logDb.getRange({ start: chosenUpTo - 1, end: compactedBelow - 1, reverse: true, limit: memoryWindow })) {
        bytes += value[2]
        if (windowStart < chosenUpTo && bytes > memoryWindowBytes) break
        windowStart = key
      }
      const chosen: Array<ChosenEntry> = []
      const accepted: Array<DurableState["accepted"][number]> = []
      for (const { key, value } of logDb.getRange({ start: windowStart })) {
        const v = valueAt(key, value)
        if (key < chosenUpTo || value[3] === null) chosen.push({ instance: key, value: v })
        else accepted.push({ instance: key, ballot: value[3], value: v })
      }
      return { promised: meta.promised, proposerRound: meta.proposerRound, accepted, chosen, chosenUpTo, compactedBelow, ...(meta.configs !== undefined ? { configs: meta.configs } : {}) }
    })

  /**
   * Reads wait only for writes of the instances they read (whose index entry would still
   * point at an older frame, or nowhere), not for everything in flight.
   */
  const readChosen = (from: number, count: number, maxBytes = Infinity) =>
    Effect.suspend(() => {
      let waits: Array<Promise<void>> | undefined
      if (inflight.size > 0) {
        for (let i = from; i < from + count; i++) {
          const w = inflight.get(i)
          if (w !== undefined) (waits ??= []).push(w)
        }
      }
      const read = readIndexed(from, count, maxBytes)
      return waits === undefined ? read : Effect.andThen(Effect.promise(() => Promise.all(waits)), read)
    })
  const readIndexed = (from: number, count: number, maxBytes: number) =>
    attempt("readChosen", () => {
      const out: Array<ChosenEntry> = []
      let bytes = 0
      for (let i = Math.max(from, meta.compactedBelow ?? 0); i < from + count; i++) {
        const loc = locationOf(i)
        if (loc === undefined) continue
        if (out.length > 0 && bytes + loc[2] > maxBytes) break
        bytes += loc[2]
        out.push({ instance: i, value: valueAt(i, loc) })
      }
      return out
    })

  // ---- compaction -------------------------------------------------------------

  /** Segments older than the one being written to, oldest first, with their size and age. */
  const compact = (policy: CompactionPolicy) =>
    attempt("compact", async () => {
      const from = meta.compactedBelow ?? 0
      if (policy.below <= from) return from
      const older = segments().filter((n) => n < tail.segment)
      if (older.length === 0) return from
      const bytesFrom = new Map<number, number>()
      let newer = tail.offset
      for (let i = older.length - 1; i >= 0; i--) {
        bytesFrom.set(older[i]!, newer)
        newer += sizeOf(older[i]!)
      }
      const now = Date.now()
      const doomed: Array<number> = []
      let below = from
      for (const n of older) {
        const max = meta.segmentMax?.[n] ?? -1
        if (max >= policy.below) break
        const oldEnough = now - fs.statSync(join(walDir, segmentName(n))).mtimeMs >= policy.retainMs
        if (bytesFrom.get(n)! < policy.retainBytes && !oldEnough) break
        doomed.push(n)
        below = Math.max(below, max + 1)
      }
      if (doomed.length === 0) return from
      // First the checkpoint, durably in the current segment, then the segments it replaces.
      const checkpoint: WalEntry = {
        _tag: "Checkpoint",
        promised: meta.promised,
        proposerRound: meta.proposerRound,
        chosenUpTo: Math.max(meta.chosenUpTo, below),
        compactedBelow: below,
        // The member sets may have been learned in a segment about to go.
        ...(meta.configs !== undefined ? { configs: meta.configs } : {})
      }
      await enqueue([{ entry: checkpoint, frame: encodeWalFrame(checkpoint) }])
      for (const n of doomed) {
        const fd = fds.get(n)
        if (fd !== undefined) fs.closeSync(fd)
        fds.delete(n)
        sizes.delete(n)
        fs.rmSync(join(walDir, segmentName(n)), { force: true })
      }
      const d = await fs.promises.open(walDir, "r")
      try {
        await d.sync()
      } finally {
        await d.close()
      }
      const segmentMax = { ...meta.segmentMax }
      for (const n of doomed) delete segmentMax[n]
      meta = { ...meta, segmentMax }
      metaDirty = true
      void flushIndex()
      return below
    })

  const usage = Effect.sync((): StorageUsage => {
    const files = segments()
    return { bytes: files.reduce((n, f) => n + sizeOf(f), 0), segments: files.length, compactedBelow: meta.compactedBelow ?? 0 }
  })

  return PaxosStorage.of({ load, write, persist, readChosen, compact, usage })
})

/** Bytes a frame adds to a record (for callers that bound replies by frame size). */
export const FRAME_OVERHEAD = WAL_FRAME_HEADER

export const layer = (dir: string, options?: PaxosStorageOptions): Layer.Layer<PaxosStorage, StorageError> =>
  Layer.effect(PaxosStorage, make(dir, options))
