/**
 * Proxy benchmark: sysbench oltp_point_select against one mariadbd directly, through
 * haproxy in TCP mode (send-proxy: the reference C relay) and through this proxy's RW port,
 * in alternation, at 64 connections and at 1 connection (latency). Both relays send a
 * PROXY v1 header. Prints one JSON line:
 * {"bench":"proxy","connections":64,"directQps":N,"haproxyQps":N,"proxyQps":N,"ratio":N,
 *  "vsHaproxy":N,"proxyP99Ms":N,"singleConnAddedUs":N,"vsHaproxy1":N} (vsHaproxy1: the same ratio
 * at 1 connection). Also the floor of a relay on Node on this machine: a bare pipe of two
 * sockets in this process with the same PROXY header (nodeRelayQps, and nodeRelayVsHaproxy /
 * nodeRelayVsHaproxy1 at 64 and 1 connections). Env: BENCH_SECONDS (default 20).
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import * as net from "node:net"
import * as Proxy from "../src/services/proxy/Proxy.js"
import * as Routing from "../src/services/proxy/Routing.js"
import { MariaDbInstance } from "../test/support/MariaDbInstance.js"
import { haproxy } from "./support/haproxy.js"
import { sysbench as runSysbench } from "./support/sysbench.js"

const seconds = Number(process.env.BENCH_SECONDS ?? 20)
const CONNECTIONS = 64
const USER = "sbtest"
const PASSWORD = "sbtest-pw"

const sysbench = (port: number, threads: number, extra: ReadonlyArray<string>) =>
  runSysbench({ test: "oltp_point_select", port, user: USER, password: PASSWORD, threads, extra })

/** QPS and the reported latency percentile (ms) of one sysbench run. */
const measure = (port: number, threads: number, percentile: number) =>
  Effect.map(sysbench(port, threads, [`--time=${seconds}`, `--percentile=${percentile}`, "--report-interval=0", "run"]), (out) => {
    const qps = Number(/queries:\s+\d+\s+\(([\d.]+) per sec/.exec(out)?.[1] ?? NaN)
    const lat = Number(new RegExp(`${percentile}th percentile:\\s+([\\d.]+)`).exec(out)?.[1] ?? NaN)
    return { qps, lat }
  })

const program = Effect.gen(function*() {
  const db = yield* MariaDbInstance.make({
    extraConfig: { proxy_protocol_networks: "127.0.0.0/8,localhost", max_connections: 400, innodb_buffer_pool_size: "64M" }
  })
  yield* db.query("CREATE DATABASE sbtest")
  yield* db.query(`CREATE USER '${USER}'@'%' IDENTIFIED BY '${PASSWORD}'`)
  yield* db.query(`GRANT ALL ON sbtest.* TO '${USER}'@'%'`)
  yield* sysbench(db.port, 4, ["prepare"])

  // haproxy, plain TCP, one backend: the reference relay.
  const haproxyPort = yield* haproxy(db.port, { sendProxy: true })

  // This proxy, in this process, RW port to the local MariaDB.
  const routing = Routing.layerStatic({
    rw: { kind: "local", host: "127.0.0.1", port: db.port },
    ro: { kind: "local", host: "127.0.0.1", port: db.port }
  })
  const proxy = yield* Proxy.make({ host: "127.0.0.1", rwPort: 0, roPort: 0 }).pipe(Effect.provide(routing))
  const proxyPort = proxy.addresses.rw!.port
  // The floor of any relay written on Node here: a bare pipe of two sockets with the same
  // PROXY header, no parsing, no lease gate, no KILL watch, no counters.
  const nodeRelay = yield* Effect.acquireRelease(
    Effect.callback<net.Server>((resume) => {
      const server = net.createServer((client) => {
        const upstream = net.connect({ host: "127.0.0.1", port: db.port })
        client.setNoDelay(true)
        upstream.setNoDelay(true)
        upstream.write(`PROXY TCP4 ${client.remoteAddress} 127.0.0.1 ${client.remotePort} ${client.localPort}\r\n`)
        client.pipe(upstream)
        upstream.pipe(client)
        client.on("error", () => upstream.destroy())
        upstream.on("error", () => client.destroy())
      })
      server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
    }),
    (server) => Effect.sync(() => server.close())
  )
  const nodeRelayPort = (nodeRelay.address() as net.AddressInfo).port
  const relays = [["direct", db.port], ["haproxy", haproxyPort], ["nodeRelay", nodeRelayPort], ["proxy", proxyPort]] as const
  // The relays must be up before measuring: one short run through each.
  for (const port of [haproxyPort, nodeRelayPort, proxyPort]) {
    yield* sysbench(port, 1, ["--time=1", "run"]).pipe(Effect.retry({ times: 20 }))
  }

  const at64 = { direct: [] as Array<number>, haproxy: [] as Array<number>, nodeRelay: [] as Array<number>, proxy: [] as Array<number>, proxyP99: [] as Array<number> }
  for (const [name, port] of relays) {
    const r = yield* measure(port, CONNECTIONS, 99)
    at64[name].push(r.qps)
    if (name === "proxy") at64.proxyP99.push(r.lat)
    process.stderr.write(`${name} @${CONNECTIONS}: ${r.qps} qps, p99 ${r.lat} ms\n`)
  }
  const single: Record<string, number> = {}
  const singleQps: Record<string, number> = {}
  for (const [name, port] of relays) {
    const r = yield* measure(port, 1, 50)
    single[name] = r.lat
    singleQps[name] = r.qps
    process.stderr.write(`${name} @1: ${r.qps} qps, median ${r.lat} ms\n`)
  }
  const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d
  const [directQps, haproxyQps, proxyQps] = [at64.direct[0]!, at64.haproxy[0]!, at64.proxy[0]!]
  console.log(JSON.stringify({
    bench: "proxy",
    connections: CONNECTIONS,
    directQps: Math.round(directQps),
    haproxyQps: Math.round(haproxyQps),
    proxyQps: Math.round(proxyQps),
    ratio: round(proxyQps / directQps, 3),
    vsHaproxy: round(proxyQps / haproxyQps, 3),
    proxyP99Ms: at64.proxyP99[0]!,
    singleConnAddedUs: Math.round((single.proxy! - single.direct!) * 1000),
    vsHaproxy1: round(singleQps.proxy! / singleQps.haproxy!, 3),
    nodeRelayQps: Math.round(at64.nodeRelay[0]!),
    nodeRelayVsHaproxy: round(at64.nodeRelay[0]! / haproxyQps, 3),
    nodeRelayVsHaproxy1: round(singleQps.nodeRelay! / singleQps.haproxy!, 3)
  }))
})

NodeRuntime.runMain(Effect.scoped(program))
