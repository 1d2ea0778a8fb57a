/**
 * The status page (GET /) in a real browser: headless Chromium (playwright-core, the
 * Debian package at /usr/bin/chromium, which scripts/setup.sh installs). First against a fake
 * GET /cluster served here, then against a real 3-node cluster through a failover.
 */
import { describe, expect, it } from "@effect/vitest"
import { Data, Effect } from "effect"
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs"
import { createServer, type Server } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { type BrowserContext, chromium, type Page } from "playwright-core"
import type { NodeStatus } from "../src/domain/cluster/nodeStatus.js"
import { STATUS_PAGE_HTML } from "../src/services/admin/statusPage.js"
import * as LocalCluster from "../src/testing/LocalCluster.js"

const CHROMIUM = "/usr/bin/chromium"
/** The machine's network is closed: without these Chromium's own background connections fail. */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync"
]
const ARTIFACTS = fileURLToPath(new URL("../test-artifacts/", import.meta.url))

class BrowserError extends Data.TaggedError("BrowserError")<{ readonly message: string }> {}

const browserTry = <A>(what: string, f: () => Promise<A>) =>
  Effect.tryPromise({ try: f, catch: (e) => new BrowserError({ message: `${what}: ${e instanceof Error ? e.message : String(e)}` }) })

/** Headless Chromium on a fresh profile directory; closed (and the profile removed) with the scope. */
const browser = Effect.acquireRelease(
  browserTry("launching Chromium", async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run \`bash scripts/setup.sh\` (it installs the Debian package chromium)`)
    const profile = mkdtempSync(join(tmpdir(), "phxmaria-chromium-"))
    try {
      // Playwright takes the --user-data-dir as this argument (a fresh temp directory).
      const context = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        args: CHROMIUM_ARGS,
        viewport: { width: 1280, height: 860 },
        timeout: 60_000
      })
      return { context, profile }
    } catch (e) {
      rmSync(profile, { recursive: true, force: true })
      throw e
    }
  }),
  ({ context, profile }) =>
    Effect.promise(() => context.close().catch(() => undefined)).pipe(
      Effect.andThen(Effect.sync(() => rmSync(profile, { recursive: true, force: true })))
    )
).pipe(Effect.map(({ context }) => context))

interface Watched {
  readonly page: Page
  /** Uncaught exceptions in the page and Content-Security-Policy violations. */
  readonly problems: Array<string>
  /** Every URL the page requested. */
  readonly requests: Array<string>
}

const openPage = (context: BrowserContext) =>
  Effect.map(browserTry("opening a page", () => context.newPage()), (page): Watched => {
    const problems: Array<string> = []
    const requests: Array<string> = []
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`))
    page.on("console", (m) => {
      if (/content security policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`)
    })
    page.on("request", (r) => requests.push(r.url()))
    return { page, problems, requests }
  })

const screenshot = (page: Page, name: string) =>
  browserTry(`screenshot ${name}`, async () => {
    mkdirSync(ARTIFACTS, { recursive: true })
    await page.screenshot({ path: join(ARTIFACTS, name), fullPage: true })
  })

/** On failure, a screenshot of the page as it was (the failure itself is kept). */
const screenshotOnFailure = <A, E, R>(page: Page, name: string, body: Effect.Effect<A, E, R>) =>
  body.pipe(Effect.onError(() => Effect.ignore(screenshot(page, name))))

/** What the page shows, read from the DOM through its test hooks. */
interface Shown {
  readonly clusterId: string
  readonly code: string | null
  readonly banner: string
  readonly master: string
  readonly updated: string
  readonly error: string | null
  readonly dataHidden: boolean
  readonly stale: boolean
  readonly headers: ReadonlyArray<{ readonly name: string; readonly unit: string }>
  readonly rows: ReadonlyArray<{ readonly node: string | null; readonly role: string | null; readonly db: string | null; readonly cells: ReadonlyArray<string> }>
  readonly charts: Readonly<Record<string, { readonly lines: ReadonlyArray<{ readonly series: string | null; readonly d: string }>; readonly areas: number; readonly text: string }>>
  readonly problemItems: ReadonlyArray<{ readonly text: string; readonly elements: number }>
  readonly scripts: number
  readonly images: number
  readonly pwned: unknown
}

// Runs in the page (a string: the tests compile without the DOM's types).
const SHOWN = `(() => {
  const q = (s) => document.querySelector(s);
  const text = (e) => (e === null ? "" : e.textContent.trim());
  const chart = (id) => {
    const f = q('[data-testid="' + id + '"]');
    if (f === null) return { lines: [], areas: 0, text: "" };
    return {
      lines: [...f.querySelectorAll("path.line")].map((p) => ({ series: p.getAttribute("data-series"), d: p.getAttribute("d") || "" })),
      areas: f.querySelectorAll("path.area").length,
      text: text(f)
    };
  };
  const error = q('[data-testid="error"]');
  const data = q("#data");
  return {
    clusterId: text(q('[data-testid="cluster-id"]')),
    code: q('[data-testid="health"]').getAttribute("data-code"),
    banner: text(q('[data-testid="health"]')),
    master: text(q('[data-testid="master"]')),
    updated: text(q('[data-testid="updated"]')),
    error: error.hidden ? null : text(error),
    dataHidden: data.hidden,
    stale: data.classList.contains("stale"),
    headers: [...document.querySelectorAll("thead th")].map((th) => ({ name: th.firstChild.textContent.trim(), unit: text(th.querySelector("small")) })),
    rows: [...document.querySelectorAll("tr[data-node]")].filter((r) => r.offsetParent !== null).map((r) => ({
      node: r.getAttribute("data-node"), role: r.getAttribute("data-role"), db: r.getAttribute("data-db"), cells: [...r.cells].map(text)
    })),
    charts: { commits: chart("chart-commits"), latency: chart("chart-latency"), lag: chart("chart-lag") },
    problemItems: [...document.querySelectorAll("#problems li")].map((li) => ({ text: li.textContent, elements: li.children.length })),
    scripts: document.scripts.length,
    images: document.images.length,
    pwned: window.__pwned
  };
})()`

const shown = (page: Page) => browserTry("reading the page", () => page.evaluate(SHOWN) as Promise<Shown>)

/** Polls the DOM until `ok` holds, up to `timeoutMs`; fails naming `what` and what the page showed last. */
const waitForPage = ({ page, problems }: Watched, what: string, ok: (s: Shown) => boolean, timeoutMs = 15_000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    let last: Shown | undefined
    for (;;) {
      last = yield* shown(page)
      if (ok(last)) return last
      if (Date.now() > deadline) {
        return yield* new BrowserError({
          message: `timed out after ${timeoutMs} ms waiting for the page to show ${what}; it shows: ${JSON.stringify({ ...last, charts: undefined })}${
            problems.length > 0 ? `; page problems: ${problems.join("; ")}` : ""
          }`
        })
      }
      yield* Effect.sleep("100 millis")
    }
  })

const goto = (page: Page, url: string) => browserTry(`opening ${url}`, () => page.goto(url, { timeout: 30_000 }))

const row = (s: Shown, node: number) => s.rows.find((r) => r.node === String(node))
/** The text of a member's cell in the column named `column`. */
const cell = (s: Shown, node: number, column: string) => {
  const i = s.headers.findIndex((h) => h.name === column)
  if (i < 0) throw new Error(`no column ${column} in ${JSON.stringify(s.headers)}`)
  return row(s, node)?.cells[i]
}

// --- the fake agent ----------------------------------------------------------------------

type Answer = { readonly code: number; readonly body: unknown } | "hang up"

/** The page and a GET /cluster answering `answer()`, on a free loopback port; closed with the scope. */
const fakeAgent = (answer: () => Answer) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly server: Server; readonly url: string; readonly paths: Array<string> }, BrowserError>((resume) => {
      const paths: Array<string> = []
      const server = createServer((req, res) => {
        const path = (req.url ?? "/").split("?")[0]!
        paths.push(path)
        if (req.method === "GET" && path === "/") {
          res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" })
          return void res.end(STATUS_PAGE_HTML)
        }
        if (req.method === "GET" && path === "/cluster") {
          const a = answer()
          if (a === "hang up") return void req.socket.destroy()
          res.writeHead(a.code, { "content-type": "application/json" })
          return void res.end(JSON.stringify(a.body))
        }
        res.writeHead(404, { "content-type": "application/json" })
        res.end(JSON.stringify({ error: "not found" }))
      })
      server.once("error", (e) => resume(Effect.fail(new BrowserError({ message: `fake agent: ${e.message}` }))))
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        const port = typeof address === "object" && address !== null ? address.port : 0
        resume(Effect.succeed({ server, url: `http://127.0.0.1:${port}`, paths }))
      })
    }),
    ({ server }) =>
      Effect.callback<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  )

const status = (nodeId: number, master: number, over: Partial<NodeStatus> = {}): NodeStatus => ({
  clusterId: "demo",
  nodeId,
  role: nodeId === master ? "master" : "replica",
  master,
  epoch: 7,
  leaseRemainingMs: nodeId === master ? 1234 : 0,
  paxos: { role: nodeId === master ? "leader" : "follower", chosenUpTo: 4812, lastChosenInstance: 4811 },
  appliedInstance: 4812,
  lastGtid: "0-1-4700",
  database: { role: nodeId === master ? "master" : "replica", localGtid: "0-1-4700", lag: nodeId === master ? null : nodeId, lagSeconds: nodeId === master ? null : 2 * nodeId, up: true, diverged: null, replicationError: null },
  memory: { rssMb: 80 + nodeId, heapTotalMb: 40, heapUsedMb: 30, externalMb: 5 },
  members: [1, 2, 3].map((id) => ({ nodeId: id, host: "127.0.0.1", port: 7000 + id, adminPort: 7100 + id, reachable: true, voter: true })),
  ...over
})

const NOW = Date.now()
const SAMPLES = Array.from({ length: 36 }, (_, i) => ({
  t: NOW - (35 - i) * 5_000,
  commitsPerS: Math.round(400 + 250 * Math.sin(i / 4)),
  // A gap (no commits measured in that interval) splits the latency lines.
  commitP50Ms: i === 20 ? null : 2 + Math.abs(Math.sin(i / 5)),
  commitP99Ms: i === 20 ? null : 9 + 6 * Math.abs(Math.cos(i / 6)),
  lagTxns: i % 9 === 0 ? 3 : 0
}))

const cluster = (over: { clusterId?: string; members?: ReadonlyArray<unknown>; health?: unknown; samples?: ReadonlyArray<unknown> } = {}) => ({
  clusterId: over.clusterId ?? "demo",
  self: 1,
  generatedAt: Date.now(),
  health: over.health ?? { code: 0, summary: "master node 2, every member healthy", problems: [] },
  members: over.members ?? [1, 2, 3].map((id) => ({ nodeId: id, admin: `127.0.0.1:${7100 + id}`, status: status(id, 2) })),
  history: { from: 2, intervalMs: 5_000, samples: over.samples ?? SAMPLES }
})

describe("status page", () => {
  it.live("shows members, master, health and charts from GET /cluster, refreshes, escapes every string, and shows failures", () =>
    Effect.gen(function*() {
      let answer: Answer = { code: 200, body: cluster() }
      const agent = yield* fakeAgent(() => answer)
      const context = yield* browser
      const watched = yield* openPage(context)
      const { page, problems, requests } = watched
      yield* screenshotOnFailure(page, "status-page-fake-failure.png", Effect.gen(function*() {
        yield* goto(page, `${agent.url}/`)

        // A healthy cluster: one row per member, node 2 the master, the three charts drawn.
        const healthy = yield* waitForPage(watched, "three members and a healthy cluster", (s) => s.rows.length === 3 && s.code === "0")
        expect(healthy.clusterId).toBe("demo")
        expect(healthy.master).toBe("2")
        expect(healthy.banner).toContain("healthy")
        expect(healthy.error).toBeNull()
        expect(healthy.updated).toMatch(/^updated \d\d:\d\d:\d\d$/)
        expect(healthy.rows.map((r) => [r.node, r.role, r.db])).toEqual([["1", "replica", "replica"], ["2", "master", "master"], ["3", "replica", "replica"]])
        // Units in the headers.
        expect(Object.fromEntries(healthy.headers.filter((h) => h.unit !== "").map((h) => [h.name, h.unit]))).toMatchObject({
          "lease left": "ms", chosen: "instance", applied: "instance", lag: "txns", behind: "s", RSS: "MB"
        })
        expect(row(healthy, 1)!.cells[0]).toBe("1 this") // the serving node
        expect(cell(healthy, 2, "admin")).toBe("127.0.0.1:7102")
        expect(cell(healthy, 2, "role")).toBe("master")
        expect(cell(healthy, 1, "master")).toBe("2")
        expect(cell(healthy, 2, "epoch")).toBe("7")
        expect(cell(healthy, 2, "lease left")).toBe("1234")
        expect(cell(healthy, 3, "lease left")).toBe("\u2014") // the master's only
        expect(cell(healthy, 2, "chosen")).toBe("4811")
        expect(cell(healthy, 2, "applied")).toBe("4811")
        expect(cell(healthy, 2, "last GTID")).toBe("0-1-4700")
        expect(cell(healthy, 3, "lag")).toBe("3")
        expect(cell(healthy, 3, "behind")).toBe("6")
        expect(cell(healthy, 2, "reaches")).toBe("1,2,3")
        expect(cell(healthy, 2, "RSS")).toBe("82")
        // Charts: commits one line (and its area), latency p50 and p99 (split by the gap), lag one line.
        const isLine = (d: string) => /^M[\d.]+ [\d.]+( [LM][\d.]+ [\d.]+)+$/.test(d)
        expect(healthy.charts["commits"]!.lines.map((l) => l.series)).toEqual(["commitsPerS"])
        expect(healthy.charts["commits"]!.lines.every((l) => isLine(l.d))).toBe(true)
        expect(healthy.charts["commits"]!.areas).toBe(1)
        expect(healthy.charts["latency"]!.lines.map((l) => l.series)).toEqual(["commitP50Ms", "commitP99Ms"])
        expect(healthy.charts["latency"]!.lines.every((l) => isLine(l.d) && l.d.includes(" M"))).toBe(true)
        expect(healthy.charts["lag"]!.lines.map((l) => l.series)).toEqual(["lagTxns"])
        // The last values, in the captions.
        expect(healthy.charts["commits"]!.text).toContain(`last ${SAMPLES.at(-1)!.commitsPerS}`)
        expect(healthy.charts["latency"]!.text).toMatch(/p50 [\d.]+.*p99 [\d.]+/)

        // Node 3 stops answering: the page, refreshing by itself, shows it DOWN and the cluster degraded.
        answer = {
          code: 200,
          body: cluster({
            health: { code: 1, summary: "degraded", problems: ["node 3: DOWN (connect ECONNREFUSED 127.0.0.1:7103)"] },
            members: [
              { nodeId: 1, admin: "127.0.0.1:7101", status: status(1, 2) },
              { nodeId: 2, admin: "127.0.0.1:7102", status: status(2, 2, { members: status(2, 2).members.map((m) => ({ ...m, reachable: m.nodeId !== 3 })) }) },
              { nodeId: 3, admin: "127.0.0.1:7103", error: "connect ECONNREFUSED 127.0.0.1:7103" }
            ]
          })
        }
        const degraded = yield* waitForPage(watched, "node 3 down", (s) => row(s, 3)?.role === "down")
        expect(degraded.code).toBe("1")
        expect(degraded.master).toBe("2")
        expect(degraded.banner).toContain("degraded")
        expect(degraded.problemItems.map((p) => p.text)).toEqual(["node 3: DOWN (connect ECONNREFUSED 127.0.0.1:7103)"])
        expect(row(degraded, 3)!.cells).toEqual(["3", "127.0.0.1:7103", "DOWN", "connect ECONNREFUSED 127.0.0.1:7103"])
        expect(cell(degraded, 2, "reaches")).toBe("1,2 \u27173")
        yield* screenshot(page, "status-page-fake.png")

        // Strings with markup are shown as text: nothing runs, no element is made of them.
        const evil = "<script>window.__pwned=1</script>"
        answer = {
          code: 200,
          body: cluster({
            clusterId: evil,
            health: { code: 2, summary: "<b>no</b> master", problems: ["<img src=x onerror=\"window.__pwned=2\">"] },
            members: [
              { nodeId: 1, admin: "<img src=x onerror=\"window.__pwned=3\">", status: status(1, 0, { lastGtid: "</td><script>window.__pwned=4</script>", role: "replica", master: null }) },
              { nodeId: 2, admin: "127.0.0.1:7102", error: `</td></tr>${evil}` }
            ]
          })
        }
        const escaped = yield* waitForPage(watched, "the cluster id with markup", (s) => s.clusterId === evil)
        expect(escaped.code).toBe("2")
        expect(escaped.master).toBe("none")
        expect(escaped.banner).toContain("<b>no</b> master")
        expect(escaped.problemItems).toEqual([{ text: "<img src=x onerror=\"window.__pwned=2\">", elements: 0 }])
        expect(row(escaped, 1)!.cells).toContain("<img src=x onerror=\"window.__pwned=3\">")
        expect(row(escaped, 1)!.cells).toContain("</td><script>window.__pwned=4</script>")
        expect(row(escaped, 2)!.cells).toEqual(["2", "127.0.0.1:7102", "DOWN", `</td></tr>${evil}`])
        expect(escaped.rows).toHaveLength(2)
        expect([escaped.scripts, escaped.images, escaped.pwned]).toEqual([1, 0, undefined])

        // The agent hangs up: an error, the last data kept but marked stale.
        answer = "hang up"
        const unreachable = yield* waitForPage(watched, "the fetch error", (s) => s.error !== null)
        expect(unreachable.error).toContain("cannot reach this agent")
        expect(unreachable.updated).toMatch(/^last updated \d\d:\d\d:\d\d/)
        expect(unreachable.stale).toBe(true)
        expect(unreachable.rows).toHaveLength(2)

        // admin.openStatus false: 401 with {error}; the message is shown instead of any data.
        answer = { code: 401, body: { error: "a valid admin token is needed for GET /cluster" } }
        const refused = yield* waitForPage(watched, "the 401 message", (s) => s.error?.includes("a valid admin token is needed") === true)
        expect(refused.error).toContain("HTTP 401")
        expect(refused.dataHidden).toBe(true)
        expect(refused.rows).toHaveLength(0)
        expect(refused.code).toBe("")
        expect(refused.master).toBe("none")

        // Back, with no samples yet: the error goes, the charts say so and draw nothing.
        answer = { code: 200, body: cluster({ samples: [] }) }
        const back = yield* waitForPage(watched, "the data again", (s) => s.error === null && s.rows.length === 3)
        expect([back.dataHidden, back.stale, back.code, back.master]).toEqual([false, false, "0", "2"])
        for (const c of ["commits", "latency", "lag"]) {
          expect(back.charts[c]!.lines).toEqual([])
          expect(back.charts[c]!.text).toContain("no samples yet")
        }

        // Nothing but the page and its own endpoint was requested; no script error, no CSP violation.
        expect(new Set(agent.paths)).toEqual(new Set(["/", "/cluster"]))
        expect(requests.filter((u) => !u.startsWith(`${agent.url}/`))).toEqual([])
        expect(problems).toEqual([])
      }))
    }), { timeout: 120_000 })

  it.live("follows a real cluster through a SIGKILL of the master's agent", () =>
    Effect.gen(function*() {
      const c = yield* LocalCluster.make({ nodes: 3, clusterId: "status-page", database: true })
      const context = yield* browser
      const watched = yield* openPage(context)
      const { page, problems } = watched
      yield* screenshotOnFailure(page, "status-page-failover-failure.png", Effect.gen(function*() {
        const open = (n: LocalCluster.LocalNode) => goto(page, `http://${n.host}:${n.adminPort}/`)
        const aMaster = (s: Shown) => /^\d+$/.test(s.master) && s.rows.length === 3
        let viewer = c.nodes[0]!
        yield* open(viewer)
        let first = yield* waitForPage(watched, "a master and a healthy cluster", (s) => aMaster(s) && s.code === "0", 90_000)
        const m = Number(first.master)
        // The page is watched from a node that survives.
        if (m === viewer.nodeId) {
          viewer = c.nodes[1]!
          yield* open(viewer)
          first = yield* waitForPage(watched, `master ${m} from node ${viewer.nodeId}`, (s) => s.master === String(m) && s.rows.length === 3, 30_000)
        }
        expect(first.clusterId).toBe("status-page")
        expect(row(first, m)!.role).toBe("master")
        expect(first.rows.map((r) => r.role).filter((r) => r === "master")).toHaveLength(1)
        expect(first.charts["commits"]!.text).toContain("Commits")

        yield* c.nodes[m - 1]!.kill("SIGKILL")
        const after = yield* waitForPage(
          watched,
          `a master other than ${m}, node ${m} down, the cluster degraded`,
          (s) => aMaster(s) && s.master !== String(m) && row(s, m)?.role === "down" && s.code === "1",
          60_000
        )
        expect(after.error).toBeNull()
        expect(row(after, Number(after.master))!.role).toBe("master")
        expect(row(after, m)!.cells[2]).toBe("DOWN")
        expect(after.banner).toContain(`node ${m}`)
        // The new master's samples reach the commits chart (one every 5 s, after a first reading).
        const charted = yield* waitForPage(watched, "the commits chart drawn from the new master's samples",
          (s) => s.charts["commits"]!.lines.length === 1 && row(s, m)?.role === "down", 30_000)
        expect(charted.charts["commits"]!.lines[0]!.d).toMatch(/^M[\d.]+ [\d.]+/)
        yield* screenshot(page, "status-page-failover.png")
        expect(problems).toEqual([])
      }))
    }), { timeout: 240_000 })

  it.live("on a node with admin.openStatus false, shows GET /cluster's refusal instead of data", () =>
    Effect.gen(function*() {
      const c = yield* LocalCluster.make({ nodes: 1, clusterId: "closed", openStatus: false })
      const context = yield* browser
      const watched = yield* openPage(context)
      yield* screenshotOnFailure(watched.page, "status-page-closed-failure.png", Effect.gen(function*() {
        const n = c.nodes[0]!
        yield* goto(watched.page, `http://${n.host}:${n.adminPort}/`)
        const refused = yield* waitForPage(watched, "the 401 refusal", (s) => s.error !== null, 30_000)
        expect(refused.error).toContain("HTTP 401")
        expect([refused.dataHidden, refused.rows.length, refused.code, refused.master]).toEqual([true, 0, "", "none"])
        expect(watched.problems).toEqual([])
      }))
    }), { timeout: 120_000 })
})
