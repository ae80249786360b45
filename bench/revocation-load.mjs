// How long a broker node takes to load its revocation mirror from Redis with many revoked serials (target: 1 M in < 5 s).
// Usage: npm run build && node bench/revocation-load.mjs [--count 1000000] [--redis redis://127.0.0.1:6379] [--json]
import { randomBytes, randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
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
  },
})
const count = Number(values.count)
const url = values.redis
const prefix = `azt-bench:${randomUUID()}:`
const BATCH = 10_000

function ms (t0) { return Math.round(performance.now() - t0) }

async function deletePrefix () {
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

const store = await openRedisStore({ url, prefix, commandTimeoutMs: 60_000 })
const result = { count, fillMs: 0, loadMs: 0, startMs: 0, lookupNs: 0, redisMemoryMb: 0 }
try {
  // Fill through the store's own batch paths (MULTI for the inventory, the revoke script for records + feed),
  // a few batches in flight at once: pipelined writes, as a bulk revoke would do them.
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

  // A fresh store, as a node starting up would open it; load, then build the mirror (what start() does).
  const node = await openRedisStore({ url, prefix, commandTimeoutMs: 60_000 })
  try {
    const t1 = performance.now()
    const loaded = await node.loadRevocations()
    result.loadMs = ms(t1)
    if (loaded.revocations.length !== count) throw new Error(`loaded ${loaded.revocations.length}, expected ${count}`)

    const t2 = performance.now()
    const mirror = new RevocationMirror(node, { blockMs: 1000 })
    await mirror.start()
    result.startMs = ms(t2)
    if (mirror.state().size !== count) throw new Error(`mirror holds ${mirror.state().size}, expected ${count}`)

    // The connect-time check: a Map lookup, whatever the size.
    const probes = loaded.revocations.slice(0, 100_000).map((r) => r.serial)
    const t3 = performance.now()
    let hits = 0
    for (let round = 0; round < 10; round++) for (const s of probes) if (mirror.isRevoked(s)) hits++
    result.lookupNs = Math.round(((performance.now() - t3) * 1e6) / (probes.length * 10))
    if (hits !== probes.length * 10) throw new Error('lookup missed')
    await mirror.close()
  } finally {
    await node.close()
  }
} finally {
  await store.close()
  await deletePrefix()
}

if (values.json) {
  console.log(JSON.stringify(result))
} else {
  console.log(`revoked serials:                 ${count}`)
  console.log(`fill (record + revoke, batched): ${result.fillMs} ms`)
  console.log(`Redis memory used after fill:    ${result.redisMemoryMb} MB`)
  console.log(`loadRevocations alone:           ${result.loadMs} ms`)
  console.log(`mirror start (load + build):     ${result.startMs} ms   (target < 5000 ms)`)
  console.log(`isRevoked lookup:                ${result.lookupNs} ns`)
}
