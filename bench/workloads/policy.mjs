// Workload "policy": decision time of the policy engine with 10 000 statements loaded, cached and uncached.
// Runs bench/policy.mjs (which owns the measurement) pinned to the broker CPU and reads its report.
import path from 'node:path'
import { CPUS, runPinned } from '../lib/proc.mjs'
import { childEnv } from '../lib/targets.mjs'

export const name = 'policy'
export const title = 'Policy: decision time with 10 000 statements'
export const targets = ['zt']

export function describe (o) {
  return `bench/policy.mjs ${o.policyStatements} on one core: parse and compile, then publish/subscribe/receive decisions for one identity, ` +
    'from the per-connection cache and uncached (every call a new topic, cache size 0). No baseline does the same work; figures stand alone.'
}

// label in bench/policy.mjs output → metric key (values in its unit, converted to the metric's)
const LINES = [
  ['parse + validate', 'parseMs', 'ms'],
  ['compileFor at CONNECT', 'compileUs', 'µs'],
  ['publish, cached', 'publishCachedNs', 'ns'],
  ['receive, cached', 'receiveCachedNs', 'ns'],
  ['subscribe, cached', 'subscribeCachedNs', 'ns'],
  ['publish, uncached (allowed', 'publishUncachedNs', 'ns'],
  ['publish, uncached (default deny', 'publishDenyNs', 'ns'],
  ['receive, uncached', 'receiveUncachedNs', 'ns'],
  ['subscribe, uncached', 'subscribeUncachedNs', 'ns'],
  ['publish through a full LRU', 'lruNs', 'ns'],
  ['first decision after a reload', 'reloadUs', 'µs'],
]

export const metrics = {
  parseMs: { label: 'parse + validate all statements', unit: 'ms', better: 'lower', digits: 0 },
  compileUs: { label: 'compile for one identity at CONNECT', unit: 'µs', better: 'lower', digits: 1 },
  publishCachedNs: { label: 'publish decision, cached', unit: 'ns', better: 'lower', digits: 0 },
  receiveCachedNs: { label: 'receive decision, cached', unit: 'ns', better: 'lower', digits: 0 },
  subscribeCachedNs: { label: 'subscribe decision, cached', unit: 'ns', better: 'lower', digits: 0 },
  publishUncachedNs: { label: 'publish decision, uncached (allowed)', unit: 'ns', better: 'lower', digits: 0 },
  publishDenyNs: { label: 'publish decision, uncached (default deny)', unit: 'ns', better: 'lower', digits: 0 },
  receiveUncachedNs: { label: 'receive decision, uncached', unit: 'ns', better: 'lower', digits: 0 },
  subscribeUncachedNs: { label: 'subscribe decision, uncached', unit: 'ns', better: 'lower', digits: 0 },
  lruNs: { label: 'publish through a full LRU (misses + evictions)', unit: 'ns', better: 'lower', digits: 0 },
  reloadUs: { label: 'first decision after a reload (recompile)', unit: 'µs', better: 'lower', digits: 0 },
}

// Issue 4 asks that "a publish decision stays in microseconds" with 10 000 statements; read here as under 10 µs.
export const goals = [
  { metric: 'publishUncachedNs', of: 'zt', below: 10_000, text: 'publish decision with 10 000 statements stays in microseconds (uncached, < 10 µs)' },
  { metric: 'publishDenyNs', of: 'zt', below: 10_000, text: 'denied publish decision, uncached, < 10 µs' },
]

const SCALE = { ns: { ns: 1, µs: 1000, ms: 1e6 }, µs: { ns: 1e-3, µs: 1, ms: 1000 }, ms: { ns: 1e-6, µs: 1e-3, ms: 1 } }

export async function runAll (ctx) {
  const { stdout } = await runPinned(CPUS.broker, process.execPath, [path.join(ctx.root, 'bench/policy.mjs'), String(ctx.opts.policyStatements)], { cwd: ctx.root, env: childEnv(), timeoutMs: 300_000 })
  const values = {}
  for (const line of stdout.split('\n')) {
    const m = /^(.*?)\s+([\d.]+) (ns|µs|ms)\b/.exec(line)
    if (m === null) continue
    const hit = LINES.find(([label]) => m[1].startsWith(label))
    if (hit === undefined) continue
    const [, key, wantUnit] = hit
    values[key] = Number(m[2]) * SCALE[wantUnit][m[3]]
  }
  const missing = LINES.filter(([, key]) => values[key] === undefined).map(([label]) => label)
  return { byTarget: { zt: values }, notes: missing.length > 0 ? [`bench/policy.mjs output lacked: ${missing.join('; ')}`] : [] }
}
