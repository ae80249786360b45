// How long a broker node takes to load its revocation mirror from Redis with many revoked serials (target: 1 M in < 5 s).
// Usage: npm run build && node bench/revocation-load.mjs [--count 1000000] [--redis redis://127.0.0.1:6379] [--json]
import { spawnSync } from 'node:child_process'
import { randomBytes, randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { Redis } from 'ioredis'
import { RevocationMirror } from '../dist/broker/revocation.js'
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

/** What a node does when it starts, in a fresh process (no garbage from the fill): start the mirror, then probe it. */
async function measure (prefix) {
  const node = await openRedisStore({ url, prefix, commandTimeoutMs: 60_000 })
  try {
    const t0 = performance.now()
    const mirror = new RevocationMirror(node, { blockMs: 1000 })
    await mirror.start()
    const startMs = ms(t0)
    const size = mirror.state().size
    globalThis.gc?.()
    const heapMb = Math.round(process.memoryUsage().heapUsed / 1048576)
    await mirror.close()
    const t2 = performance.now()
    const loaded = await node.loadRevocations()
    const loadMs = ms(t2)
    // The connect-time check is a Map lookup, whatever the size: half hits, half misses, JIT warmed first.
    const probes = []
    for (let i = 0; i < 50_000 && i < loaded.revocations.length; i++) probes.push(loaded.revocations[(i * 7919) % loaded.revocations.length].serial, '1' + randomBytes(8).toString('hex'))
    let hits = 0
    for (const s of probes) if (mirror.isRevoked(s)) hits++
    const t1 = performance.now()
    for (let round = 0; round < 10; round++) for (const s of probes) if (mirror.isRevoked(s)) hits++
    const lookupNs = Math.round(((performance.now() - t1) * 1e6) / (probes.length * 10))
    return { size, startMs, loadMs, loaded: loaded.revocations.length, lookupNs, hits, heapMb }
  } finally {
    await node.close()
  }
}

if (values.measure !== undefined) {
  console.log(JSON.stringify(await measure(values.measure)))
  process.exit(0)
}

const prefix = `azt-bench:${randomUUID()}:`
const store = await openRedisStore({ url, prefix, commandTimeoutMs: 60_000 })
const result = { count, fillMs: 0, redisMemoryMb: 0, startMs: 0, loadMs: 0, lookupNs: 0, heapMb: 0 }
try {
  // Fill through the store's own batch paths (the record script for the inventory, the revoke script for records
  // + feed), a few batches in flight at once: pipelined writes, as a bulk revoke would do them.
  const t0 = performance.now()
  const inFlight = new Set()
  for (let done = 0; done < count; done += BATCH) {
    const n = Math.min(BATCH, count - done)
    const certs = Array.from({ length: n }, (_, i) => ({
      serial: '1' + randomBytes(8).toString('hex'),
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
  Object.assign(result, { startMs: measured.startMs, loadMs: measured.loadMs, lookupNs: measured.lookupNs, heapMb: measured.heapMb })
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
  console.log(`loadRevocations again (warm):        ${result.loadMs} ms`)
  console.log(`isRevoked lookup:                    ${result.lookupNs} ns`)
  console.log(`node heap with the mirror loaded:    ${result.heapMb} MB`)
}
