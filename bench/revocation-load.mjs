// How long a broker node takes to load its revocation mirror from Redis with many revoked serials (target: 1 M in < 5 s).
// Usage: npm run build && node bench/revocation-load.mjs [--count 1000000] [--redis redis://127.0.0.1:6379] [--json]
import { spawnSync } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { RevocationMirror } from '../dist/broker/revocation.js'
// Serials as the CA issues them: 128 random bits, 32 hex digits.
import { newSerial } from '../dist/ca/profile.js'
import { openRedisStore } from '../dist/store/redis.js'
import { redisKeys } from '../dist/store/redis-keys.js'

const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '1000000' },
    redis: { type: 'string', default: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379' },
    json: { type: 'boolean', default: false },
    // Internal: the child process that plays a starting node.
    measure: { type: 'string' },
  },
})
const count = Number(values.count)
const url = values.redis
const BATCH = 10_000

function ms (t0) { return Math.round(performance.now() - t0) }

async function deletePrefix (prefix) {
  const client = new Redis(url)
  try {
    let cursor = '0'
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', redisKeys(prefix).pattern, 'COUNT', 10_000)
      cursor = next
      if (keys.length > 0) await client.unlink(...keys)
    } while (cursor !== '0')
  } finally {
    client.disconnect()
  }
}

/** V8 heap plus ArrayBuffer memory (which holds the packed mirror), after a full GC. */
function heldBytes () {
  globalThis.gc?.()
  const m = process.memoryUsage()
  return m.heapUsed + m.arrayBuffers
}

/** What a node does when it starts, in a fresh process (no garbage from the fill): start the mirror, then probe it. */
async function measure (prefix) {
  const node = await openRedisStore({ url, prefix, commandTimeoutMs: 60_000 })
  const probe = new Redis(url)
  try {
    const before = heldBytes()
    const t0 = performance.now()
    const mirror = new RevocationMirror(node, { blockMs: 1000 })
    await mirror.start()
    const startMs = ms(t0)
    const size = mirror.state().size
    const held = heldBytes()
    const heapMb = Math.round(process.memoryUsage().heapUsed / 1048576)
    const bytesPerSerial = Math.round((held - before) / size)

    // Probes are half hits (serials sampled from the store), half misses, as flat strings like the ones the broker
    // derives from a certificate. The connect path asks about each serial once (a fresh set of probes, JIT warmed
    // by another); the per-message path asks about the same connected serials again and again (1 000 of them).
    const sample = await probe.hrandfield(redisKeys(prefix).revoked, Math.min(100_000, size))
    const probes = sample.map((s) => [Buffer.from(s, 'latin1').toString('latin1'), newSerial()]).flat()
    const warm = probes.splice(0, probes.length / 2)
    let hits = 0
    for (const s of warm) if (mirror.isRevoked(s)) hits++
    const t1 = performance.now()
    for (const s of probes) if (mirror.isRevoked(s)) hits++
    const lookupNs = Math.round(((performance.now() - t1) * 1e6) / probes.length)
    const connected = probes.slice(0, 1_000)
    const t4 = performance.now()
    for (let round = 0; round < 1_000; round++) for (const s of connected) if (mirror.isRevoked(s)) hits++
    const repeatNs = Math.round(((performance.now() - t4) * 1e6) / (connected.length * 1_000))
    if (hits !== sample.length + connected.length * 500) throw new Error(`lookup found ${hits} revoked probes, expected ${sample.length + connected.length * 500}`)
    await mirror.close()

    // A second start in the same (warm) process, and the object-per-record load (what `crl` and tools use).
    const t2 = performance.now()
    const again = new RevocationMirror(node, { blockMs: 1000 })
    await again.start()
    const restartMs = ms(t2)
    await again.close()
    const t3 = performance.now()
    const loaded = await node.loadRevocations()
    const loadMs = ms(t3)
    return { size, startMs, restartMs, loadMs, loaded: loaded.revocations.length, lookupNs, repeatNs, heapMb, bytesPerSerial }
  } finally {
    probe.disconnect()
    await node.close()
  }
}

if (values.measure !== undefined) {
  console.log(JSON.stringify(await measure(values.measure)))
  process.exit(0)
}

const prefix = `azt-bench:${randomUUID()}:`
const store = await openRedisStore({ url, prefix, commandTimeoutMs: 60_000 })
const result = { count, fillMs: 0, redisMemoryMb: 0, startMs: 0, restartMs: 0, loadMs: 0, lookupNs: 0, repeatNs: 0, heapMb: 0, bytesPerSerial: 0 }
try {
  // Fill through the store's own batch paths (the record script for the inventory, the revoke script for records
  // + feed), a few batches in flight at once: pipelined writes, as a bulk revoke would do them.
  const t0 = performance.now()
  const inFlight = new Set()
  for (let done = 0; done < count; done += BATCH) {
    const n = Math.min(BATCH, count - done)
    const certs = Array.from({ length: n }, (_, i) => ({
      serial: newSerial(),
      id: `dev-${done + i}`,
      kind: 'device',
      groups: ['sensors'],
      notBefore: '2025-01-01T00:00:00.000Z',
      notAfter: '2026-01-01T00:00:00.000Z',
    }))
    const p = store.recordIssued(certs).then(() => store.revoke(certs.map((c) => c.serial), 'cessationOfOperation'))
    inFlight.add(p)
    p.finally(() => inFlight.delete(p))
    if (inFlight.size >= 4) await Promise.race(inFlight)
  }
  await Promise.all(inFlight)
  result.fillMs = ms(t0)

  const probe = new Redis(url)
  const info = await probe.info('memory').finally(() => probe.disconnect())
  result.redisMemoryMb = Math.round(Number(/used_memory:(\d+)/.exec(info)?.[1] ?? 0) / 1048576)

  const child = spawnSync(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), '--measure', prefix, '--redis', url], { encoding: 'utf8' })
  if (child.status !== 0) throw new Error(`measuring process failed: ${child.stderr}`)
  const measured = JSON.parse(child.stdout.trim().split('\n').at(-1))
  if (measured.size !== count || measured.loaded !== count) throw new Error(`mirror holds ${measured.size}, loaded ${measured.loaded}, expected ${count}`)
  const { size: _size, loaded: _loaded, ...numbers } = measured
  Object.assign(result, numbers)
} finally {
  await store.close()
  await deletePrefix(prefix)
}

if (values.json) {
  console.log(JSON.stringify(result))
} else {
  console.log(`revoked serials:                     ${count}`)
  console.log(`fill (record + revoke, batched):     ${result.fillMs} ms`)
  console.log(`Redis memory used after fill:        ${result.redisMemoryMb} MB`)
  console.log(`node start: mirror.start() (fresh):  ${result.startMs} ms   (target < 5000 ms)`)
  console.log(`mirror.start() again (warm process): ${result.restartMs} ms`)
  console.log(`loadRevocations as objects (warm):   ${result.loadMs} ms`)
  console.log(`isRevoked, first ask (half hits):    ${result.lookupNs} ns   (connect path)`)
  console.log(`isRevoked, 1 000 serials asked again: ${result.repeatNs} ns   (per-message path)`)
  console.log(`V8 heap with the mirror loaded:      ${result.heapMb} MB`)
  console.log(`memory held per revoked serial:      ${result.bytesPerSerial} bytes (V8 heap + ArrayBuffers)`)
}
