/** Tools for tests and demos: a local cluster of real agent processes on one machine. */
export * as LocalCluster from "./LocalCluster.js"
