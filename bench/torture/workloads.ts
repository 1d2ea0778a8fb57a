/**
 * Workloads for the torture suite: what each client does through an RW port, recorded as
 * a history (src/domain/history.ts), and how the history is checked. Status rules, as in
 * Jepsen: an error before the commit was sent is "fail" (the server rolls back); an error
 * or a timeout while a commit (or an autocommit write) was in flight is "info" (either
 * outcome); a read that fails is dropped.
 */
import mysql from "mysql2/promise"
import { type BankOp, checkBank } from "../../src/domain/checkers/bank.js"
import { type AppendOp, checkAppend } from "../../src/domain/checkers/append.js"
import { checkRegister, type RegisterOp } from "../../src/domain/checkers/register.js"
import type { Op } from "../../src/domain/checkers/history.js"

export const WORKLOADS = ["bank", "append", "register"] as const
export type WorkloadName = (typeof WORKLOADS)[number]

export const USER = "torture"
export const PASSWORD = "torture-secret"
const OP_TIMEOUT_MS = 5_000

export interface CheckOutcome {
  readonly valid: boolean
  readonly anomalies: ReadonlyArray<string>
  readonly lostAckedWrites: number
}

/** One client connection's session: `op` runs one operation and says how it ended. */
export interface Workload {
  readonly name: WorkloadName
  /** Tables and initial rows (run once through the master's RW port). */
  readonly setup: ReadonlyArray<string>
  /** The next operation of client `process` (random within the workload). */
  readonly run: (conn: mysql.Connection, random: () => number, history: Array<Op<unknown, unknown>>, process: number) => Promise<void>
  /** Reads the final state through the master's RW port and checks the whole history. */
  readonly check: (conn: mysql.Connection, history: ReadonlyArray<Op<unknown, unknown>>) => Promise<CheckOutcome>
}

export const now = () => performance.now()

class Timeout extends Error {}

/** A query bounded in time: a commit stuck behind a partition becomes indeterminate. */
const query = async <R>(conn: mysql.Connection, sql: string, params?: ReadonlyArray<unknown>): Promise<R> => {
  let timer: NodeJS.Timeout | undefined
  try {
    const result = await Promise.race([
      conn.query(sql, params === undefined ? undefined : [...params]),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Timeout(`no answer in ${OP_TIMEOUT_MS} ms`)), OP_TIMEOUT_MS)
      })
    ])
    return result[0] as R
  } finally {
    clearTimeout(timer)
  }
}

const record = <I, O>(history: Array<Op<unknown, unknown>>, op: Op<I, O>) => history.push(op as Op<unknown, unknown>)

// ---------------------------------------------------------------------------

const ACCOUNTS = 5
const INITIAL = 100

const bank: Workload = {
  name: "bank",
  setup: [
    "CREATE DATABASE IF NOT EXISTS torture",
    "CREATE TABLE torture.accounts (id INT PRIMARY KEY, balance INT NOT NULL)",
    `INSERT INTO torture.accounts VALUES ${Array.from({ length: ACCOUNTS }, (_, i) => `(${i}, ${INITIAL})`).join(",")}`
  ],
  run: async (conn, random, history, process) => {
    const invokeMs = now()
    if (random() < 0.3) {
      try {
        const rows = await query<Array<{ id: number; balance: number }>>(conn, "SELECT id, balance FROM torture.accounts ORDER BY id")
        record<BankOp["input"], ReadonlyArray<number>>(history, {
          process, invokeMs, completeMs: now(), status: "ok", input: { type: "read" }, output: rows.map((r) => Number(r.balance))
        })
      } catch (e) {
        throw e
      }
      return
    }
    const from = Math.floor(random() * ACCOUNTS)
    const to = (from + 1 + Math.floor(random() * (ACCOUNTS - 1))) % ACCOUNTS
    const amount = 1 + Math.floor(random() * 5)
    const input = { type: "transfer" as const, from, to, amount }
    let committing = false
    try {
      await query(conn, "BEGIN")
      const rows = await query<Array<{ id: number; balance: number }>>(
        conn, "SELECT id, balance FROM torture.accounts WHERE id IN (?, ?) FOR UPDATE", [from, to])
      const balance = Number(rows.find((r) => Number(r.id) === from)?.balance ?? 0)
      if (balance < amount) {
        await query(conn, "ROLLBACK")
        record(history, { process, invokeMs, completeMs: now(), status: "fail", input })
        return
      }
      await query(conn, "UPDATE torture.accounts SET balance = balance - ? WHERE id = ?", [amount, from])
      await query(conn, "UPDATE torture.accounts SET balance = balance + ? WHERE id = ?", [amount, to])
      committing = true
      await query(conn, "COMMIT")
      record(history, { process, invokeMs, completeMs: now(), status: "ok", input })
    } catch (e) {
      record(history, { process, invokeMs, completeMs: committing ? Infinity : now(), status: committing ? "info" : "fail", input })
      throw e
    }
  },
  check: async (conn, history) => {
    const rows = await query<Array<{ balance: number }>>(conn, "SELECT balance FROM torture.accounts ORDER BY id")
    const r = checkBank({
      initial: Array.from({ length: ACCOUNTS }, () => INITIAL),
      final: rows.map((x) => Number(x.balance)),
      history: history as ReadonlyArray<BankOp>
    })
    return { valid: r.valid, anomalies: r.anomalies, lostAckedWrites: r.lostAckedWrites }
  }
}

// ---------------------------------------------------------------------------

const KEYS = 3
let nextValue = 1

const append: Workload = {
  name: "append",
  setup: [
    "CREATE DATABASE IF NOT EXISTS torture",
    "CREATE TABLE torture.lists (k INT PRIMARY KEY, v MEDIUMTEXT NOT NULL)",
    `INSERT INTO torture.lists VALUES ${Array.from({ length: KEYS }, (_, i) => `(${i}, '')`).join(",")}`
  ],
  run: async (conn, random, history, process) => {
    const key = Math.floor(random() * KEYS)
    const invokeMs = now()
    if (random() < 0.4) {
      const rows = await query<Array<{ v: string }>>(conn, "SELECT v FROM torture.lists WHERE k = ?", [key])
      record<AppendOp["input"], ReadonlyArray<number>>(history, {
        process, invokeMs, completeMs: now(), status: "ok", input: { type: "read", key }, output: parseList(rows[0]?.v ?? "")
      })
      return
    }
    const value = nextValue++
    const input = { type: "append" as const, key, value }
    try {
      await query(conn, "UPDATE torture.lists SET v = CONCAT(v, ',', ?) WHERE k = ?", [value, key])
      record(history, { process, invokeMs, completeMs: now(), status: "ok", input })
    } catch (e) {
      record(history, { process, invokeMs, completeMs: Infinity, status: "info", input })
      throw e
    }
  },
  check: async (conn, history) => {
    const rows = await query<Array<{ k: number; v: string }>>(conn, "SELECT k, v FROM torture.lists ORDER BY k")
    const r = checkAppend({ history: history as ReadonlyArray<AppendOp>, final: new Map(rows.map((x) => [Number(x.k), parseList(x.v)])) })
    return { valid: r.valid, anomalies: r.anomalies, lostAckedWrites: r.lostAckedWrites }
  }
}

const parseList = (v: string): ReadonlyArray<number> => v.split(",").filter((x) => x.length > 0).map(Number)

// ---------------------------------------------------------------------------

let nextRegisterValue = 1

const register: Workload = {
  name: "register",
  setup: [
    "CREATE DATABASE IF NOT EXISTS torture",
    "CREATE TABLE torture.register (k INT PRIMARY KEY, v INT NULL)",
    "INSERT INTO torture.register VALUES (0, NULL)"
  ],
  run: async (conn, random, history, process) => {
    const invokeMs = now()
    const r = random()
    if (r < 0.5) {
      const rows = await query<Array<{ v: number | null }>>(conn, "SELECT v FROM torture.register WHERE k = 0")
      const v = rows[0]?.v
      record<RegisterOp["input"], RegisterOp["output"]>(history, {
        process, invokeMs, completeMs: now(), status: "ok", input: { type: "read" }, output: v === null || v === undefined ? null : Number(v)
      })
      return
    }
    if (r < 0.8) {
      const value = nextRegisterValue++
      const input = { type: "write" as const, value }
      try {
        await query(conn, "UPDATE torture.register SET v = ? WHERE k = 0", [value])
        record(history, { process, invokeMs, completeMs: now(), status: "ok", input })
      } catch (e) {
        record(history, { process, invokeMs, completeMs: Infinity, status: "info", input })
        throw e
      }
      return
    }
    const from = Math.max(1, nextRegisterValue - 1 - Math.floor(random() * 2))
    const to = nextRegisterValue++
    const input = { type: "cas" as const, from, to }
    try {
      const res = await query<{ affectedRows: number }>(conn, "UPDATE torture.register SET v = ? WHERE k = 0 AND v = ?", [to, from])
      record(history, { process, invokeMs, completeMs: now(), status: "ok", input, output: res.affectedRows === 1 })
    } catch (e) {
      record(history, { process, invokeMs, completeMs: Infinity, status: "info", input })
      throw e
    }
  },
  check: async (_conn, history) => {
    const r = checkRegister(history as ReadonlyArray<RegisterOp>, { initial: null, maxExplored: 2_000_000 })
    // A search that hit its bound proves nothing either way: reported, not counted as an anomaly.
    return {
      valid: r.valid !== false,
      anomalies: r.valid === "unknown" ? [] : r.anomalies,
      lostAckedWrites: 0
    }
  }
}

export const workloads: Record<WorkloadName, Workload> = { bank, append, register }
