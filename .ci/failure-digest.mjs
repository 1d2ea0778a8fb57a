// Prints a short digest of the agent logs that LocalCluster kept for failed tests
// (PHXMARIA_FAILED_LOGS): warnings, errors and master changes, the last few per node.
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs"
import { join } from "node:path"

const root = process.argv[2]
const PER_NODE = 6
const WIDTH = 220
const interesting = /WARN|ERROR|FATAL|master|switchover|lease|diverged|rebuild/i

if (root !== undefined && existsSync(root)) {
  for (const cluster of readdirSync(root).sort()) {
    const dir = join(root, cluster)
    const nodes = readdirSync(dir).filter((n) => /^node\d+$/.test(n) && existsSync(join(dir, n, "agent.log"))).sort()
    if (nodes.length === 0) continue
    console.log(`--- agent logs of a failed test's cluster (${cluster}; last ${PER_NODE} notable lines per node) ---`)
    for (const n of nodes) {
      const file = join(dir, n, "agent.log")
      const lines = readFileSync(file, "utf8").split("\n").filter((l) => interesting.test(l))
      for (const l of lines.slice(-PER_NODE)) console.log(`${n}: ${l.length > WIDTH ? l.slice(0, WIDTH) + "..." : l}`)
      if (statSync(file).size === 0) console.log(`${n}: (empty log)`)
    }
  }
}
