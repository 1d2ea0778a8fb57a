/**
 * A seeded model of one node's database side for the role machine (databaseRole.ts): the
 * master lease comes and goes, mariadbd crashes, hangs, leaves un-ACKed commits behind
 * or gets a write behind the cluster's back, the commit pipeline dies; the role loop's
 * steps are carried out against that model the way NodeDatabase carries them out against
 * MariaDB. After every tick the invariants are checked; a calm phase at the end checks
 * that the node gets where it should.
 */
import { afterFailure, type DbRole, mayServeRw, nextStep, readinessOf, type RoleObservation, type RoleStep } from "../../src/domain/cluster/databaseRole.js"

/** A small deterministic PRNG (mulberry32). */
const prng = (seed: number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export interface RoleSimOptions {
  readonly seed: number
  readonly ticks: number
  /** The decision function under test (a broken one shows that the checks can fail). */
  readonly decide?: (o: RoleObservation) => RoleStep
  /** Whether a lease loss fences RW and stops the pipeline at once (NodeDatabase does). */
  readonly fenceOnLeaseLoss?: boolean
  /** Whether a diverged server is rebuilt (rebuild.auto); default: decided by the seed. */
  readonly rebuildAuto?: boolean
}

export interface RoleSimResult {
  readonly failures: ReadonlyArray<string>
  readonly promotions: number
  readonly stepDowns: number
  readonly diverged: boolean
  readonly restarts: number
  readonly rebuilds: number
}

interface Server {
  up: boolean
  hung: boolean
  generation: number
  /** Commits waiting for an ACK (a restart truncates them). */
  unackedTail: boolean
  /** A write made behind the cluster's back (no restart removes it). */
  foreignWrite: boolean
}

export const runRoleSimulation = (options: RoleSimOptions): RoleSimResult => {
  const random = prng(options.seed)
  const chance = (p: number) => random() < p
  const decide = options.decide ?? nextStep
  const fenceOnLeaseLoss = options.fenceOnLeaseLoss ?? true
  const rebuildAuto = options.rebuildAuto ?? chance(0.5)
  let rebuilds = 0
  let rebuildRequested = false
  /** Ticks until a rebuild may run again (NodeDatabase spaces them). */
  let rebuildIn = 0
  const failures: Array<string> = []
  const server: Server = { up: true, hung: false, generation: 0, unackedTail: false, foreignWrite: false }
  let leaseHeld = false
  let role: DbRole = "starting"
  let rwOpen = false
  let generationSeen = -1
  let lag: number | null = null
  let pipeline: { stepsLeft: number } | "serving" | undefined
  let probeDueIn = 0
  let promotions = 0
  let stepDowns = 0
  let restarts = 0
  let tick = 0
  let calm = false
  let servedInCalm = false
  const fail = (what: string) => failures.push(`tick ${tick} (role ${role}): ${what}`)

  const restart = () => {
    server.up = true
    server.hung = false
    server.generation++
    server.unackedTail = false
    restarts++
  }

  /** A step that asks MariaDB something fails while the server is hung or down (and now and then anyway). */
  const queryFails = () => !server.up || server.hung || (!calm && chance(0.01))

  const calibrate = (): "ok" | "failed" => {
    role = "calibrating"
    lag = null
    if (rwOpen) fail("calibrating with RW open")
    if (!server.up) restart()
    if (queryFails()) return "failed"
    // The comparison: un-ACKed commits are truncated by one restart, a foreign write is not.
    if (server.unackedTail || server.foreignWrite) restart()
    if (server.foreignWrite) {
      role = "diverged"
      return "ok"
    }
    generationSeen = server.generation
    lag = Math.floor(random() * 3)
    role = "replica"
    return "ok"
  }

  const stopPipeline = () => {
    pipeline = undefined
  }

  const stepDown = (): "ok" | "failed" => {
    stepDowns++
    // Fence first (RW closed before the role, and with it readiness, changes).
    rwOpen = false
    role = "stepping-down"
    stopPipeline()
    // read_only: a hung server is restarted.
    if (server.hung) restart()
    return calibrate()
  }

  const carryOut = (step: RoleStep, seen: RoleObservation): "ok" | "failed" => {
    switch (step._tag) {
      case "Calibrate":
        return calibrate()
      case "Promote":
        if (!(seen.role === "replica" && seen.leaseHeld && seen.serverUp && !seen.serverRestarted)) fail("promoted outside a healthy replica holding the lease")
        promotions++
        role = "promoting"
        pipeline = { stepsLeft: 1 + Math.floor(random() * 3) }
        return "ok"
      case "StepDown":
        return stepDown()
      case "WatchReplica":
        if (queryFails()) return "failed"
        if (server.foreignWrite) {
          role = "diverged"
          return "ok"
        }
        if (lag !== null && lag > 0) lag--
        return "ok"
      case "ProbeMaster":
        probeDueIn = 3
        return server.hung ? stepDown() : "ok"
      case "Rebuild":
        if (rwOpen || mayServeRw(seen.role)) fail("rebuilt a server that may serve RW")
        if (!(seen.role === "diverged" && (rebuildAuto || seen.rebuildRequested)) && !(seen.role === "replica" && seen.rebuildRequested && !seen.leaseHeld)) {
          fail("rebuilt a server neither diverged (with rebuild.auto) nor a replica an operator asked to rebuild")
        }
        rebuildRequested = false
        // A new datadir: no foreign write, nothing un-ACKed; then everything from the start.
        server.foreignWrite = false
        restart()
        rebuilds++
        rebuildIn = 20
        role = "starting"
        return "ok"
      case "Wait":
        return "ok"
    }
  }

  for (tick = 0; tick < options.ticks; tick++) {
    calm = tick >= options.ticks - 120
    const leaseAvailable = !calm || tick < options.ticks - 40
    // ---- the world moves ------------------------------------------------------
    if (!calm) {
      if (server.up && chance(0.01)) server.up = false
      if (server.up && chance(0.005)) server.hung = true
      if (pipeline === "serving" && chance(0.05)) server.unackedTail = true
      if (!mayServeRw(role) && chance(0.0015)) server.foreignWrite = true
      if (pipeline === "serving" && chance(0.01)) stopPipeline()
      // An operator's POST /rebuild, taken only from a node that does not serve RW.
      if (!mayServeRw(role) && chance(0.003)) rebuildRequested = true
    }
    const ready = readinessOf(role, lag).ready
    const wasHeld = leaseHeld
    if (leaseHeld && (!leaseAvailable || (!calm && chance(0.04)) || !ready)) leaseHeld = false
    else if (!leaseHeld && leaseAvailable && ready && chance(calm ? 0.5 : 0.15)) leaseHeld = true
    // The lease's SteppedDown event, acted on at once.
    if (wasHeld && !leaseHeld && fenceOnLeaseLoss && mayServeRw(role)) {
      rwOpen = false
      stopPipeline()
    }
    // ---- the promotion runs on by itself ----------------------------------------
    if (pipeline !== undefined && pipeline !== "serving") {
      // The promotion's catch-up check (local position = the log's) never passes on a
      // server with a foreign write, nor on one that does not answer.
      if (!server.up || server.hung || server.foreignWrite) stopPipeline()
      else if (--pipeline.stepsLeft <= 0) {
        pipeline = "serving"
        role = "master"
        rwOpen = true
      }
    }
    // ---- one step of the role loop --------------------------------------------
    const seen: RoleObservation = {
      role,
      leaseHeld,
      serverUp: server.up,
      serverRestarted: server.generation !== generationSeen,
      pipelineRunning: pipeline !== undefined,
      probeDue: probeDueIn-- <= 0,
      mayRebuild: rebuildAuto && rebuildIn-- <= 0,
      rebuildRequested
    }
    const step = decide(seen)
    if (process.env.ROLE_SIM_TRACE !== undefined) console.log(tick, JSON.stringify(seen), step._tag, JSON.stringify({ server, pipeline, lag, rwOpen }))
    if (carryOut(step, seen) === "failed") {
      // As NodeDatabase's failure path: step down if RW may be open, restart a server that
      // does not answer, redo from the start.
      const next = afterFailure({ role, serverAnswers: server.up && !server.hung, managed: true })
      if (next.stepDown) stepDown()
      if (next.restartServer) restart()
      role = next.next(role)
    }
    // ---- invariants -------------------------------------------------------------
    if (rwOpen && !leaseHeld) fail("RW open without the lease")
    if (rwOpen && !mayServeRw(role)) fail(`RW open in role ${role}`)
    if (rwOpen && !server.up) {
      // A dead server is seen at the next step (db.exited wakes the loop): allowed for one tick.
      if (seen.serverUp === false) fail("RW still open a step after mariadbd died")
    }
    if (rwOpen && server.foreignWrite) fail("RW open on a server with a write the log does not have")
    if (calm && leaseAvailable && rwOpen) servedInCalm = true
  }

  // ---- liveness: the calm phase ------------------------------------------------
  if (!server.foreignWrite && role === "diverged") fail("diverged without a foreign write")
  if (!server.foreignWrite) {
    if (!servedInCalm) fail("the lease was on offer for 80 calm ticks and the node never served RW")
    if (role !== "replica") fail(`after the calm phase (lease withdrawn) the node is ${role}, not replica`)
    if (rwOpen) fail("RW open after the calm phase")
  } else if (role !== "diverged" && role !== "replica") fail(`a node with a foreign write ended ${role}`)

  return { failures, promotions, stepDowns, diverged: role === "diverged", restarts, rebuilds }
}
