// Policy engine speed with 10 000 statements: load, compile per connection, and decisions cached and uncached.
// Run after `npm run build`: node bench/policy.mjs [statements]
import { compileFor, parsePolicies } from '../dist/policies/index.js'

const N = Number(process.argv[2] ?? 10_000)

// A realistic large deployment: most statements are per device or per group, a few per kind or for everyone,
// some by id glob. Each has publish, subscribe and a deny, so every bucket and list is populated.
const policies = []
for (let i = 0; i < N; i++) {
  const mod = i % 10
  const base = { name: `s-${i}` }
  if (mod < 6) {
    policies.push({ ...base, principals: { ids: [`dev-${i}`] }, allow: { publish: [`devices/\${id}/telemetry/${i}`, `devices/\${id}/events/#`], subscribe: [`devices/\${id}/commands/#`] }, deny: { publish: [`devices/\${id}/events/secret/${i}`] } })
  } else if (mod < 9) {
    policies.push({ ...base, principals: { kind: 'device', groups: [`g${i}`] }, allow: { publish: [`fleet/\${group}/up/${i}`], subscribe: [`fleet/\${group}/broadcast`, { topic: `fleet/${i}/#`, maxQos: 1 }] } })
  } else if (i % 100 === 9) {
    policies.push({ ...base, principals: { kind: 'device' }, allow: { publish: [`shared/${i}/+`], subscribe: [`shared/${i}/#`] }, deny: { subscribe: [`shared/${i}/admin/#`] } })
  } else {
    policies.push({ ...base, principals: { ids: [`lab-${i}-*`] }, allow: { publish: ['lab/#'] } })
  }
}
const text = JSON.stringify({ policies })

function time (label, iterations, fn) {
  for (let i = 0; i < Math.min(iterations, 10_000); i++) fn(i) // warm up
  const start = process.hrtime.bigint()
  for (let i = 0; i < iterations; i++) fn(i)
  const ns = Number(process.hrtime.bigint() - start) / iterations
  const shown = ns >= 1000 ? `${(ns / 1000).toFixed(2)} µs` : `${ns.toFixed(0)} ns`
  console.log(`${label.padEnd(58)} ${shown.padStart(10)} per op  (${iterations} ops)`)
}

let t = performance.now()
const set = parsePolicies(text, 'bench.json')
console.log(`parse + validate ${N} statements (JSON)`.padEnd(58), `${(performance.now() - t).toFixed(1)} ms`.padStart(10))

const identity = { id: 'dev-10', kind: 'device', groups: ['g16', 'g17', 'g27'], serial: 'ab12' }
t = performance.now()
// An Authorizer compiles its tables at its first question (`generation` is one): time both together.
const probe = compileFor(set, identity)
const applying = probe.statements.length
console.log('first compileFor'.padEnd(58), `${(performance.now() - t).toFixed(3)} ms`.padStart(10), ` (${applying} statements apply)`)

time('compileFor at CONNECT (indexed principals)', 2_000, (i) => compileFor(set, { ...identity, id: `dev-${(i * 10) % N}` }).generation)

const a = compileFor(set, identity)
time('publish, cached (same topic)', 2_000_000, () => a.publish('devices/dev-10/telemetry/10', { qos: 1, retain: false }))
time('receive, cached', 2_000_000, () => a.receive('fleet/g16/broadcast', { qos: 1, retain: false }))
time('subscribe, cached', 2_000_000, () => a.subscribe('devices/dev-10/commands/#', { qos: 1 }))

// Uncached: every call a new topic, more than the cache holds, so each one is evaluated from scratch.
const topics = Array.from({ length: 100_000 }, (_, i) => `devices/dev-10/events/e${i}`)
const nocache = compileFor(set, identity, { cacheSize: 0 })
time('publish, uncached (allowed via #)', 500_000, (i) => nocache.publish(topics[i % topics.length], { qos: 1, retain: false }))
time('publish, uncached (default deny)', 500_000, (i) => nocache.publish(`devices/dev-11/events/e${i}`, { qos: 0, retain: false }))
time('receive, uncached', 500_000, (i) => nocache.receive(`fleet/16/x/${i}`, { qos: 2, retain: false }))
time('subscribe, uncached (covers + overlaps)', 500_000, (i) => nocache.subscribe(`devices/dev-10/commands/c${i}/#`, { qos: 1 }))
const lru = compileFor(set, identity)
time('publish through a full LRU cache (misses + evictions)', 500_000, (i) => lru.publish(topics[i % topics.length], { qos: 1, retain: false }))

// A reload: the authorizer notices the new generation at its next call and recompiles once.
const set2 = parsePolicies(text, 'bench.json')
let current = set
const live = compileFor({ current: () => current }, identity)
live.publish('devices/dev-10/telemetry/10')
t = performance.now()
current = set2
live.publish('devices/dev-10/telemetry/10')
console.log('first decision after a reload (lazy recompile)'.padEnd(58), `${((performance.now() - t) * 1000).toFixed(1)} µs`.padStart(10))
