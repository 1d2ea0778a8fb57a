/**
 * Members' hosts (an IP address or a host name, config `members[].host`) as the addresses
 * their connections come from. A connection's peer is an address, so an allowlist of
 * members compares it with what each host resolves to: `memberMatcher` keeps that set,
 * answers synchronously from the last resolution, and looks names up again every
 * {@link RESOLVE_TTL_MS} (a DNS change is followed), sooner when an unknown address
 * knocks. A name that does not resolve is logged and retried, never fatal: DNS may come
 * up after the node. Only a node's own host must resolve (it listens on it):
 * {@link listenAddress}.
 */
import { Data, Effect, FiberSet, Result, Schedule, type Scope } from "effect"
import { lookup } from "node:dns"
import type { LookupFunction } from "node:net"
import { canonicalAddress, isIpAddress, isWildcard } from "../../domain/wire/address.js"
import { monotonicMs } from "../time.js"
import { forkScopedLogged } from "../fibers.js"

/** A host name with no address (NXDOMAIN, no answer in time, a resolver error). */
export class HostNotResolved extends Data.TaggedError("HostNotResolved")<{
  readonly host: string
  readonly reason: string
}> {
  override get message() {
    return `the host name ${this.host} does not resolve (${this.reason})`
  }
}

/** How long a name's addresses are trusted before it is looked up again. */
export const RESOLVE_TTL_MS = 30_000
/** A name that failed is tried again this often; an unknown peer address makes every name be looked up again at most this often. */
const RETRY_MS = 5_000
/** One lookup's bound: getaddrinfo may wait for the resolver's own timeouts much longer. */
const LOOKUP_TIMEOUT_MS = 5_000

/**
 * The addresses `host` stands for, canonical (IPv4-mapped IPv6 as IPv4, IPv6 compressed):
 * an IP address is itself; a name is looked up the way the OS resolves it (dns.lookup:
 * /etc/hosts, then DNS), every address it has.
 */
export const resolve = (host: string): Effect.Effect<ReadonlyArray<string>, HostNotResolved> => {
  if (isIpAddress(host)) return Effect.succeed([canonicalAddress(host)])
  return Effect.flatMap(Effect.promise(() => lookupOnce(host)), (r) =>
    "error" in r
      ? Effect.fail(new HostNotResolved({ host, reason: r.error }))
      : r.addresses.length > 0
      ? Effect.succeed(r.addresses)
      : Effect.fail(new HostNotResolved({ host, reason: "no address" }))).pipe(
    Effect.timeoutOrElse({
      duration: `${LOOKUP_TIMEOUT_MS} millis`,
      orElse: () => Effect.fail(new HostNotResolved({ host, reason: `no answer within ${LOOKUP_TIMEOUT_MS / 1000} s` }))
    })
  )
}

type Lookup = { readonly addresses: ReadonlyArray<string> } | { readonly error: string }

/**
 * getaddrinfo runs on libuv's thread pool, which the log's durable writes share: one lookup
 * per name at a time (a caller that times out leaves it running; the next one waits for
 * that same lookup), so a resolver that hangs takes at most one thread per name.
 */
const inFlight = new Map<string, Promise<Lookup>>()
const lookupOnce = (host: string): Promise<Lookup> => {
  const running = inFlight.get(host)
  if (running !== undefined) return running
  const started = new Promise<Lookup>((settle) => {
    lookup(host, { all: true, order: "verbatim" }, (error, addresses) => {
      inFlight.delete(host)
      settle(error !== null ? { error: error.code ?? error.message } : { addresses: [...new Set(addresses.map((a) => canonicalAddress(a.address)))] })
    })
  })
  inFlight.set(host, started)
  return started
}

/** What a dial was last told a name stands for, and until when (monotonic ms). */
const dialCache = new Map<string, { readonly addresses: ReadonlyArray<string>; readonly until: number }>()

/**
 * A `lookup` for net.connect / tls.connect to members' hosts: names are looked up once at a
 * time (as {@link resolve}) and remembered for {@link RESOLVE_TTL_MS}, so a peer redialled
 * every second or a forward relay per client connection costs no getaddrinfo each.
 */
export const dialLookup: LookupFunction = (host, options, callback) => {
  const reply = (addresses: ReadonlyArray<string>) => {
    const all = addresses.map((address) => ({ address, family: address.includes(":") ? 6 : 4 }))
    if (options.all === true) callback(null, all)
    else callback(null, all[0]!.address, all[0]!.family)
  }
  if (isIpAddress(host)) return reply([canonicalAddress(host)])
  const cached = dialCache.get(host)
  if (cached !== undefined && cached.until > performance.now()) return reply(cached.addresses)
  void lookupOnce(host).then((r) => {
    if ("error" in r || r.addresses.length === 0) {
      const e: NodeJS.ErrnoException = new Error(`getaddrinfo ${"error" in r ? r.error : "ENOTFOUND"} ${host}`)
      e.code = "error" in r ? r.error : "ENOTFOUND"
      return callback(e, [])
    }
    dialCache.set(host, { addresses: r.addresses, until: performance.now() + RESOLVE_TTL_MS })
    reply(r.addresses)
  })
}

/**
 * The address to listen on and dial from for this node's own `host`: a wildcard or an IP
 * address as given, a name as the first address it resolves to (the one Node's own listen
 * would take). Fails when the name does not resolve: the node cannot serve on it.
 */
export const listenAddress = (host: string): Effect.Effect<string, HostNotResolved> =>
  isWildcard(host) || isIpAddress(host) ? Effect.succeed(host) : Effect.map(resolve(host), (addresses) => addresses[0]!)

export interface MemberMatcher {
  /** Whether a socket's peer `address` is one of the members' hosts' addresses, as last resolved. */
  readonly isMember: (address: string) => boolean
  /** Watches more hosts (a member the log added); a new name is looked up in the background. */
  readonly add: (hosts: ReadonlyArray<string>) => Effect.Effect<void>
  /** Looks every name up again now (an IP host never changes). */
  readonly refresh: Effect.Effect<void>
  /** Each watched host and the addresses it stands for now (none: a name not resolved yet). */
  readonly addresses: Effect.Effect<ReadonlyMap<string, ReadonlyArray<string>>>
}

interface Entry {
  /** The last addresses the name resolved to: kept while a later lookup fails (a DNS outage does not lock members out). */
  addresses: ReadonlyArray<string>
  /** When to look the name up again (monotonic ms). */
  due: number
  failing: boolean
}

/**
 * An allowlist of members' hosts, for listeners that take connections from members only
 * (the proxy's forward ports, the admin HTTP's member calls). The names given are looked
 * up before it returns (each bounded by 5 s; one that fails is logged and retried every
 * 5 s); a background fiber, ended with the scope, looks them up again every
 * {@link RESOLVE_TTL_MS}. `isMember` answers from memory; a miss also starts a lookup of
 * every name (at most every 5 s), so a member that moved is let in soon, not after the TTL.
 */
export const memberMatcher = (
  hosts: ReadonlyArray<string>,
  options?: {
    /** The lookup (tests); default {@link resolve}. */
    readonly resolve?: ((host: string) => Effect.Effect<ReadonlyArray<string>, HostNotResolved>) | undefined
    readonly ttlMs?: number | undefined
  }
): Effect.Effect<MemberMatcher, never, Scope.Scope> =>
  Effect.gen(function*() {
    const lookUp = options?.resolve ?? resolve
    const ttlMs = options?.ttlMs ?? RESOLVE_TTL_MS
    const now = yield* monotonicMs
    const runFork = yield* FiberSet.makeRuntime<never>()
    const entries = new Map<string, Entry>()
    let allowed = new Set<string>()
    let lastMissRefresh = -Infinity
    let refreshing = false

    const rebuild = () => {
      allowed = new Set([...entries.values()].flatMap((e) => e.addresses))
    }

    const resolveOne = (host: string) =>
      Effect.gen(function*() {
        const entry = entries.get(host)
        if (entry === undefined) return
        const result = yield* Effect.result(lookUp(host))
        if (Result.isFailure(result)) {
          entry.due = now() + RETRY_MS
          if (!entry.failing) {
            entry.failing = true
            yield* Effect.logWarning(
              `member host ${host} does not resolve (${result.failure.reason}); ${
                entry.addresses.length > 0 ? `keeping ${entry.addresses.join(", ")}` : "its connections are refused"
              } until it does (looked up again every ${RETRY_MS / 1000} s)`
            )
          }
          return
        }
        const addresses = result.success
        const changed = addresses.length !== entry.addresses.length || addresses.some((a) => !entry.addresses.includes(a))
        if (entry.failing || (changed && entry.addresses.length > 0)) {
          yield* Effect.logInfo(`member host ${host} resolves to ${addresses.join(", ")}`)
        }
        entry.addresses = addresses
        entry.due = now() + ttlMs
        entry.failing = false
        if (changed) rebuild()
      })

    const namesDue = (all: boolean) => {
      const t = now()
      return [...entries].filter(([host, e]) => !isIpAddress(host) && (all || e.due <= t)).map(([host]) => host)
    }
    const resolveAll = (names: ReadonlyArray<string>) => Effect.forEach(names, resolveOne, { concurrency: "unbounded", discard: true })
    /** The background rounds and the misses: one at a time, so a slow resolver does not pile lookups up. */
    const resolveDue = (all: boolean) =>
      Effect.suspend(() => {
        if (refreshing) return Effect.void
        refreshing = true
        return resolveAll(namesDue(all)).pipe(
          Effect.ensuring(Effect.sync(() => {
            refreshing = false
          }))
        )
      })

    const watch = (list: ReadonlyArray<string>): ReadonlyArray<string> => {
      const added: Array<string> = []
      for (const host of list) {
        if (entries.has(host)) continue
        // An IP address is its own resolution, at once and for good.
        entries.set(host, isIpAddress(host) ? { addresses: [canonicalAddress(host)], due: Infinity, failing: false } : { addresses: [], due: 0, failing: false })
        added.push(host)
      }
      if (added.length > 0) rebuild()
      return added.filter((h) => !isIpAddress(h))
    }

    yield* resolveAll(watch(hosts))
    yield* resolveDue(false).pipe(
      Effect.repeat(Schedule.spaced(`${Math.min(RETRY_MS, ttlMs)} millis`)),
      forkScopedLogged("host addresses: looking up members' host names")
    )

    return {
      isMember: (address) => {
        if (allowed.has(canonicalAddress(address))) return true
        const t = now()
        if (t - lastMissRefresh >= RETRY_MS && [...entries.keys()].some((h) => !isIpAddress(h))) {
          lastMissRefresh = t
          runFork(resolveDue(true))
        }
        return false
      },
      add: (list) =>
        Effect.sync(() => {
          const names = watch(list)
          // In the background: the caller (the route keeper's refresh) must not wait on DNS.
          for (const host of names) runFork(resolveOne(host))
        }),
      refresh: Effect.suspend(() => resolveAll(namesDue(true))),
      addresses: Effect.sync(() => new Map([...entries].map(([host, e]) => [host, e.addresses])))
    } satisfies MemberMatcher
  })
