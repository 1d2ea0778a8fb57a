/**
 * Faults for the torture suite, on a LocalCluster: SIGKILL of a mariadbd or an agent,
 * SIGSTOP of the master's processes beyond the lease, network partitions as iptables DROP
 * rules between the nodes' own loopback addresses, a restart of every node at once, and a
 * wipe (a node stopped, its MariaDB datadir deleted, then started: it must come back by itself),
 * a planned switchover (POST /switchover to the master, to a random node or any), and a
 * membership change (a new node added, a member removed, or one replaced by a new node).
 * Every fault has a heal; iptables rules are tagged and only ours are ever removed.
 */
import { execFileSync } from "node:child_process"
import { readFileSync, rmSync } from "node:fs"
import { dirname } from "node:path"
import { Effect } from "effect"
import * as LocalCluster from "../../src/testing/LocalCluster.js"
import { requestAddMember, requestPromoteMember, requestRemoveMember, requestSwitchover } from "../../src/client/StatusClient.js"
import { Schedule } from "effect"
import mysql from "mysql2/promise"
import { adminQuery } from "../../test/support/dbCluster.js"
import { PASSWORD, USER } from "./workloads.js"

export const FAULTS = ["none", "kill", "pause", "partition", "restart-all", "wipe", "switchover", "membership", "kill-query", "mixed"] as const
export type Fault = (typeof FAULTS)[number]

const TAG = `phxmaria-torture-${process.pid}`

type Rule = readonly [source: string, destination: string]
const added: Array<Rule> = []

const iptables = (op: "-I" | "-D", [s, d]: Rule) =>
  execFileSync("iptables", ["-w", op, "INPUT", "-s", s, "-d", d, "-m", "comment", "--comment", TAG, "-j", "DROP"], { stdio: "pipe" })

/** Whether partitions can be made here (iptables present and usable by us). */
export const iptablesUsable = (): string | undefined => {
  try {
    execFileSync("iptables", ["-w", "-L", "INPUT", "-n"], { stdio: "pipe" })
    return undefined
  } catch (e) {
    return `iptables cannot be used here: ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`
  }
}

/** Removes every rule this process added (also from the exit hook). */
export const removeRules = () => {
  while (added.length > 0) {
    const rule = added.pop()!
    try {
      iptables("-D", rule)
    } catch {
      // already gone
    }
  }
}
process.on("exit", removeRules)

/** Drops traffic between every node of `a` and every node of `b`, both ways. */
export const cut = (a: ReadonlyArray<LocalCluster.LocalNode>, b: ReadonlyArray<LocalCluster.LocalNode>) => {
  for (const x of a) {
    for (const y of b) {
      for (const rule of [[x.host, y.host], [y.host, x.host]] as const) {
        iptables("-I", rule)
        added.push(rule)
      }
    }
  }
}

const mariadbPid = (n: LocalCluster.LocalNode): number | undefined => {
  try {
    return Number(readFileSync(n.mariadb!.pidFile, "utf8").trim())
  } catch {
    return undefined
  }
}

const signal = (pid: number | undefined, sig: NodeJS.Signals) => {
  if (pid === undefined) return
  try {
    process.kill(pid, sig)
  } catch {
    // already gone
  }
}

export interface Injected {
  readonly description: string
  /** Undoes the fault (restart what was killed, continue what was stopped, drop rules). */
  readonly heal: Effect.Effect<void, unknown>
}

const pick = <A>(xs: ReadonlyArray<A>, random: () => number): A => xs[Math.floor(random() * xs.length)]!

/** The members now (a membership fault changes them), and the id the next new node gets. */
export interface Members {
  nodes: Array<LocalCluster.LocalNode>
  nextId: number
}

/** A node's admin endpoint, with the cluster's token (membership and switchover change something). */
const adminOf = (cluster: LocalCluster.LocalCluster, n: LocalCluster.LocalNode) => ({ address: `${n.host}:${n.adminPort}`, token: cluster.adminToken })

/** A new node started with --join, added as a learner, then a voter once caught up (through `master`). */
const addNode = (cluster: LocalCluster.LocalCluster, members: Members, master: LocalCluster.LocalNode) =>
  Effect.gen(function*() {
    const { node, member } = yield* cluster.addNode(members.nextId++)
    yield* node.start
    yield* requestAddMember(adminOf(cluster, master), {
      id: member.nodeId, host: member.host, port: member.port, adminPort: member.adminPort,
      rwPort: member.rwPort!, roPort: member.roPort!, forwardRwPort: member.forwardRwPort!, forwardRoPort: member.forwardRoPort!
    })
    yield* requestPromoteMember(adminOf(cluster, master), member.nodeId).pipe(Effect.retry({ schedule: Schedule.spaced("500 millis"), times: 240 }))
    members.nodes.push(node)
    return node
  })

/** Removes `target` (a master hands over first); it stays running, outside the cluster. */
const removeNode = (cluster: LocalCluster.LocalCluster, members: Members, master: LocalCluster.LocalNode, target: LocalCluster.LocalNode) =>
  Effect.gen(function*() {
    let via = master
    if (target === master) {
      const done = yield* requestSwitchover(adminOf(cluster, master), undefined)
      via = members.nodes.find((n) => n.nodeId === done.master)!
    }
    yield* requestRemoveMember(adminOf(cluster, via), target.nodeId)
    members.nodes = members.nodes.filter((n) => n !== target)
  })

/** Injects one fault of `kind` ("mixed": any of them) on the cluster, given who is master now. */
export const inject = (
  kind: Exclude<Fault, "none">,
  cluster: LocalCluster.LocalCluster,
  master: LocalCluster.LocalNode | undefined,
  random: () => number,
  members: Members = { nodes: [...cluster.nodes], nextId: cluster.nodes.length + 1 }
): Effect.Effect<Injected, unknown> =>
  Effect.gen(function*() {
    const nodes = members.nodes
    const concrete = kind === "mixed" ? pick(["kill", "pause", "partition", "restart-all", "switchover", "kill-query"] as const, random) : kind
    const target = master !== undefined && random() < 0.7 ? master : pick(nodes, random)
    switch (concrete) {
      case "kill-query": {
        // The majority away (agents stopped): a commit on the master waits for its ACK, and
        // a client of the same user KILLs it through the RW port (as a driver's query timeout does).
        if (master === undefined) return { description: "kill-query skipped: no master", heal: Effect.void }
        const pids = nodes.filter((n) => n !== master).map((n) => n.pid())
        for (const p of pids) signal(p, "SIGSTOP")
        const heal = Effect.sync(() => {
          for (const p of pids) signal(p, "SIGCONT")
        })
        const waiting = yield* adminQuery<{ ID: number; USER: string }>(master,
          "SELECT ID, USER FROM information_schema.PROCESSLIST WHERE STATE LIKE 'Waiting for semi-sync ACK%'").pipe(
          Effect.repeat({ schedule: Schedule.spaced("20 millis"), until: (rows) => rows.length > 0, times: 150 }),
          Effect.orElseSucceed(() => [])
        )
        const victim = waiting.find((r) => r.USER === USER)
        if (victim === undefined) return { description: "kill-query: no commit of the workload was waiting", heal }
        const answer = yield* Effect.promise(async () => {
          const conn = await mysql.createConnection({ host: master.host, port: master.rwPort!, user: USER, password: PASSWORD, connectTimeout: 2_000 })
          try {
            await conn.query(`KILL QUERY ${Number(victim.ID)}`)
            return "OK"
          } catch (e) {
            return e instanceof Error ? e.message : String(e)
          } finally {
            conn.destroy()
          }
        }).pipe(Effect.orElseSucceed(() => "no connection"))
        return { description: `kill-query: KILL QUERY ${victim.ID} (a waiting commit) on node ${master.nodeId}, majority stopped: ${answer}`, heal }
      }
      case "kill": {
        if (random() < 0.5) {
          signal(mariadbPid(target), "SIGKILL")
          // The agent restarts its own mariadbd.
          return { description: `SIGKILL mariadbd of node ${target.nodeId}`, heal: Effect.void }
        }
        yield* target.kill("SIGKILL")
        return { description: `SIGKILL agent of node ${target.nodeId}`, heal: target.pid() === undefined ? target.start : Effect.void }
      }
      case "pause": {
        const pids = [target.pid(), mariadbPid(target)]
        for (const p of pids) signal(p, "SIGSTOP")
        return {
          description: `SIGSTOP agent and mariadbd of node ${target.nodeId}`,
          heal: Effect.sync(() => {
            for (const p of pids) signal(p, "SIGCONT")
          })
        }
      }
      case "partition": {
        const others = nodes.filter((n) => n !== target)
        if (random() < 0.5 || nodes.length < 5) {
          cut([target], others)
          return { description: `isolate node ${target.nodeId}`, heal: Effect.sync(removeRules) }
        }
        // A ring on 5 nodes: each node sees only its neighbours.
        for (let i = 0; i < nodes.length; i++) {
          const far = nodes.filter((_, j) => Math.abs(i - j) > 1 && Math.abs(i - j) < nodes.length - 1 && j > i)
          cut([nodes[i]!], far)
        }
        return { description: "ring partition", heal: Effect.sync(removeRules) }
      }
      case "wipe": {
        // SIGKILL (a crash), then the server the agent left behind, then its whole MariaDB dir.
        yield* target.kill("SIGKILL")
        yield* LocalCluster.killOrphanMariaDb(target)
        rmSync(dirname(target.mariadb!.pidFile), { recursive: true, force: true })
        return { description: `wipe node ${target.nodeId}'s MariaDB datadir`, heal: target.start }
      }
      case "membership": {
        if (master === undefined) return { description: "membership change skipped: no master", heal: Effect.void }
        const founding = cluster.nodes.length
        const op = nodes.length > founding ? "remove" : random() < 0.5 ? "add" : "replace"
        const outcome = yield* Effect.result(Effect.gen(function*() {
          if (op === "add") return `added node ${(yield* addNode(cluster, members, master)).nodeId}`
          const target = pick(nodes, random)
          if (op === "remove") {
            yield* removeNode(cluster, members, master, target)
            return `removed node ${target.nodeId}${target === master ? " (the master, after a switchover)" : ""}`
          }
          const added = yield* addNode(cluster, members, master)
          yield* removeNode(cluster, members, master, target)
          return `replaced node ${target.nodeId} by node ${added.nodeId}`
        }))
        return {
          description: `membership ${op}: ${outcome._tag === "Success" ? outcome.success : `refused (${String((outcome.failure as { message?: string }).message ?? outcome.failure)})`}`,
          heal: Effect.void
        }
      }
      case "switchover": {
        if (master === undefined) return { description: "switchover skipped: no master", heal: Effect.void }
        const others = nodes.filter((n) => n !== master)
        const to = random() < 0.5 ? pick(others, random).nodeId : undefined
        // Refused (a target behind, an election meanwhile) is an outcome too: the checker judges the data.
        const outcome = yield* Effect.result(requestSwitchover(adminOf(cluster, master), to))
        return {
          description: `switchover from node ${master.nodeId} to ${to === undefined ? "any" : `node ${to}`}: ` +
            (outcome._tag === "Success" ? `node ${outcome.success.master} master after ${outcome.success.handoverMs} ms` : `refused (${outcome.failure.message})`),
          heal: Effect.void
        }
      }
      case "restart-all": {
        yield* Effect.forEach(nodes, (n) => n.kill("SIGKILL"), { concurrency: "unbounded", discard: true })
        return {
          description: "SIGKILL every agent, then start them all",
          heal: Effect.forEach(nodes, (n) => n.start, { concurrency: "unbounded", discard: true })
        }
      }
    }
  })
