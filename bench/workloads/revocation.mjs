// Workload "revocation": three broker processes on one Redis, devices spread across them, revocations made with the
// CLI: time from `cert revoke` returning to the device's socket closing. Then a node's start-up with many revoked
// serials in Redis (bench/revocation-load.mjs, which owns that measurement).
import { spawn } from 'node:child_process'
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { closeAll, runConnections } from '../lib/load.mjs'
import { CPUS, runPinned, sleep } from '../lib/proc.mjs'
import { percentile } from '../lib/stats.mjs'
import { childEnv, startZt } from '../lib/targets.mjs'

export const name = 'revocation'
export const title = 'Revocation: cert revoke → sessions closed, 3 nodes on one Redis'
export const targets = ['zt']
const NODES = 3
const MILLION = 1_000_000

export function describe (o) {
  return `${NODES} \`aedes-zt broker\` processes (all on CPU ${CPUS.broker}) on one Redis (127.0.0.1:6379, a fresh key prefix per run, deleted afterwards), ` +
    `${o.revDevices} devices connected, device i to node i mod ${NODES}; ${o.revocations} devices spread over the nodes revoked one after another with ` +
    '`node bin/aedes-zt.js --home H --redis URL cert revoke SERIAL` (on the load CPU). Latency = the revoked device\'s socket closed (client side) − the CLI ' +
    'printed its result (the command returned: the revocation is durable); negative when the broker closed the session before the CLI got its reply to print. ' +
    'The same from the CLI process\'s exit is shown too. Node start-up = spawn → listening. ' +
    `Then bench/revocation-load.mjs --count ${o.revLoadCount} on CPU ${CPUS.broker}: fill Redis, then a node's mirror start (load + build) and the connect-time lookup` +
    (o.revLoadCount < MILLION ? `; the ${MILLION.toLocaleString('en-US')} figure is extrapolated linearly from ${o.revLoadCount.toLocaleString('en-US')}.` : '.')
}

export const metrics = {
  p50: { label: 'revoke returned → socket closed, p50', unit: 'ms', better: 'lower', digits: 1 },
  p99: { label: 'revoke returned → socket closed, p99', unit: 'ms', better: 'lower', digits: 1 },
  max: { label: 'revoke returned → socket closed, max', unit: 'ms', better: 'lower', digits: 1 },
  worstNodeP99: { label: 'p99 of the slowest node', unit: 'ms', better: 'lower', digits: 1 },
  exitP50: { label: 'CLI process exited → socket closed, p50', unit: 'ms', better: 'lower', digits: 1 },
  exitP99: { label: 'CLI process exited → socket closed, p99', unit: 'ms', better: 'lower', digits: 1 },
  spawnP50: { label: 'CLI spawned → socket closed, p50', unit: 'ms', better: 'lower', digits: 0 },
  enforcedP50: { label: 'revocation timestamp → enforced, every node (audit log), p50', unit: 'ms', better: 'lower', digits: 1 },
  enforcedP99: { label: 'revocation timestamp → enforced, every node (audit log), p99', unit: 'ms', better: 'lower', digits: 1 },
  cliP50: { label: 'cert revoke CLI run time, p50', unit: 'ms', better: 'lower', digits: 0 },
  missed: { label: 'revoked sessions not closed within 3 s', unit: '', better: 'lower', digits: 0 },
  collateral: { label: 'sessions of non-revoked devices closed', unit: '', better: 'lower', digits: 0 },
  nodeStartMs: { label: 'node start-up (spawn → listening), median of 3', unit: 'ms', better: 'lower', digits: 0 },
  loadStartMs: { label: 'mirror start with the revoked set (load + build)', unit: 'ms', better: 'lower', digits: 0 },
  loadStartPer1M: { label: 'mirror start per 1 000 000 revoked serials', unit: 'ms', better: 'lower', digits: 0 },
  lookupNs: { label: 'connect-time revocation lookup with the revoked set', unit: 'ns', better: 'lower', digits: 0 },
  fillS: { label: 'filling Redis with the revoked set (not a target)', unit: 's', better: 'lower', digits: 1 },
}

export function goalsFor (o) {
  return [
    { metric: 'p99', of: 'zt', below: 100, text: 'p99 under 100 ms from `cert revoke` returning to the socket closing, on every node' },
    { metric: 'worstNodeP99', of: 'zt', below: 100, text: 'the slowest node\'s p99 under 100 ms' },
    { metric: 'enforcedP99', of: 'zt', below: 100, text: 'every node enforces every revocation within 100 ms p99 of its timestamp (audit log)' },
    { metric: 'missed', of: 'zt', max: 0, text: 'every revoked session closed' },
    { metric: 'collateral', of: 'zt', max: 0, text: 'no other session closed' },
    {
      metric: 'loadStartPer1M',
      of: 'zt',
      below: 5000,
      text: o.revLoadCount >= MILLION ? '1 000 000 revoked serials load in under 5 s' : `1 000 000 revoked serials load in under 5 s (extrapolated from ${o.revLoadCount.toLocaleString('en-US')})`,
    },
  ]
}

async function redisClient (url) {
  const { Redis } = await import('ioredis')
  const client = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 2_000, enableOfflineQueue: false })
  client.on('error', () => {})
  await client.connect()
  return client
}

/** Null when Redis answers on the bench URL, else why the workload is skipped. */
export async function available (ctx) {
  try {
    const c = await redisClient(ctx.opts.redisUrl)
    await c.ping()
    c.disconnect()
    return null
  } catch (err) {
    return `no Redis at ${ctx.opts.redisUrl} (${err.message})`
  }
}

/** Deletes every key under the prefix (SCAN + UNLINK, never FLUSHDB: the Redis is shared). */
async function deletePrefix (baseUrl, prefix) {
  const c = await redisClient(baseUrl)
  try {
    let cursor = '0'
    do {
      const [next, keys] = await c.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      cursor = next
      if (keys.length > 0) await c.unlink(...keys)
    } while (cursor !== '0')
  } finally {
    c.disconnect()
  }
}

/**
 * Runs `cert revoke` and resolves with when it was spawned, when it printed its result (the command has returned:
 * the revocation is durable) and when the process exited.
 */
function revokeWithCli (ctx, url, serial) {
  return new Promise((resolve, reject) => {
    const spawnedAt = performance.now()
    const child = spawn('taskset', ['-c', String(CPUS.load), process.execPath, path.join(ctx.root, 'bin/aedes-zt.js'), '--home', ctx.pki.home, '--redis', url, 'cert', 'revoke', serial], { cwd: ctx.root, env: childEnv(), stdio: ['ignore', 'pipe', 'pipe'] })
    let err = ''
    let returnedAt = NaN
    child.stdout.once('data', () => { returnedAt = performance.now() })
    child.stdout.resume()
    child.stderr.on('data', (d) => { err += d })
    const timer = setTimeout(() => { child.kill('SIGKILL') }, 20_000)
    child.once('error', (e) => { clearTimeout(timer); reject(e) })
    child.once('exit', (code) => {
      const exitedAt = performance.now()
      clearTimeout(timer)
      if (code === 0) resolve({ spawnedAt, returnedAt: Number.isFinite(returnedAt) ? returnedAt : exitedAt, exitedAt })
      else reject(new Error(`cert revoke ${serial} exited ${code}: ${err.trim().split('\n').pop()}`))
    })
  })
}

export async function runAll (ctx) {
  const o = ctx.opts
  const base = o.redisUrl.replace(/\/$/, '')
  const prefix = `azt-bench:${randomUUID()}:`
  // The store takes no prefix option from the CLI or the broker config; ioredis reads options from the URL's query,
  // so keyPrefix isolates this run's keys from everything else on the shared Redis.
  const url = `${base}/0?keyPrefix=${encodeURIComponent(prefix)}`
  const cleanupKeys = () => deletePrefix(base, prefix)
  ctx.asyncCleanups.push(cleanupKeys)
  const nodes = []
  const held = []
  const notes = []
  try {
    const creds = ctx.pki.devices.slice(0, o.revDevices)
    const { openRedisStore } = await import(path.join(ctx.root, 'dist/store/redis.js'))
    const store = await openRedisStore({ url })
    try {
      await store.recordIssued([ctx.pki.service.record, ...creds.map((c) => c.record)])
    } finally {
      await store.close()
    }

    const startMs = []
    for (let k = 0; k < NODES; k++) {
      const n = await startZt(ctx, { redisUrl: url, name: `node${k}` })
      nodes.push(n)
      startMs.push(n.startMs)
    }
    ctx.pki.warmContexts(0, o.revDevices)
    const byNode = nodes.map((_, k) => creds.filter((_, i) => i % NODES === k))
    const conns = await Promise.all(nodes.map((n, k) => runConnections({
      port: n.port, mqtt: true, creds: byNode[k], contextFor: ctx.pki.contextFor, hold: true, inFlight: Math.ceil(o.inFlight / NODES), deadlineMs: o.phaseDeadlineMs,
    })))
    conns.forEach((res, k) => {
      held.push(...res.held)
      if (res.failed > 0) notes.push(`node ${k}: ${res.failed} of ${byNode[k].length} devices failed to connect: ${JSON.stringify(res.errors)}`)
    })
    const byId = new Map(held.map((c) => [c.cred.id, c]))
    await sleep(500)

    const step = o.revDevices / o.revocations
    const lat = []
    const perNode = nodes.map(() => [])
    const spawnLat = []
    const exitLat = []
    const cliMs = []
    let missed = 0
    const revoked = new Set()
    for (let r = 0; r < o.revocations; r++) {
      const i = Math.floor(r * step)
      const cred = creds[i]
      const conn = byId.get(cred.id)
      if (conn === undefined || conn.socket.destroyed) { notes.push(`device ${cred.id} was not connected; skipped`); continue }
      revoked.add(conn)
      const { spawnedAt, returnedAt, exitedAt } = await revokeWithCli(ctx, url, cred.serial)
      const deadline = performance.now() + 3_000
      while (!Number.isFinite(conn.closedAt) && performance.now() < deadline) await sleep(1)
      cliMs.push(exitedAt - spawnedAt)
      if (!Number.isFinite(conn.closedAt)) { missed++; continue }
      lat.push(conn.closedAt - returnedAt)
      perNode[i % NODES].push(conn.closedAt - returnedAt)
      exitLat.push(conn.closedAt - exitedAt)
      spawnLat.push(conn.closedAt - spawnedAt)
    }
    await sleep(300)
    // Each node's own view: the audit line it logs per revocation, with the latency from the revocation's timestamp.
    const enforced = []
    for (const n of nodes) {
      for (const line of fs.readFileSync(n.logFile, 'utf8').split('\n')) {
        if (!line.includes('"revocation.enforced"')) continue
        try { const l = JSON.parse(line); if (typeof l.latencyMs === 'number') enforced.push(l.latencyMs) } catch { /* partial line */ }
      }
    }
    if (enforced.length < o.revocations * NODES) notes.push(`${enforced.length} revocation.enforced audit lines for ${o.revocations} revocations on ${NODES} nodes`)
    const collateral = held.filter((c) => !revoked.has(c) && c.socket.destroyed).length

    ctx.log(`  load: bench/revocation-load.mjs --count ${o.revLoadCount}`)
    const { stdout } = await runPinned(CPUS.broker, process.execPath, [path.join(ctx.root, 'bench/revocation-load.mjs'), '--count', String(o.revLoadCount), '--redis', base, '--json'], {
      cwd: ctx.root,
      env: childEnv(),
      timeoutMs: 900_000,
      // It prints its JSON after deleting its keys, but may keep a Redis connection open: stop it once the line is out.
      stopWhen: (out) => /^\{.*\}\s*$/m.test(out),
    })
    const load = JSON.parse(stdout.split('\n').find((l) => l.startsWith('{')))
    return {
      byTarget: {
        zt: {
          p50: percentile(lat, 50),
          p99: percentile(lat, 99),
          max: lat.length > 0 ? Math.max(...lat) : NaN,
          worstNodeP99: Math.max(...perNode.map((l) => percentile(l, 99)).filter(Number.isFinite)),
          exitP50: percentile(exitLat, 50),
          exitP99: percentile(exitLat, 99),
          spawnP50: percentile(spawnLat, 50),
          enforcedP50: percentile(enforced, 50),
          enforcedP99: percentile(enforced, 99),
          cliP50: percentile(cliMs, 50),
          missed,
          collateral,
          nodeStartMs: percentile(startMs, 50),
          loadStartMs: load.startMs,
          loadStartPer1M: (load.startMs * MILLION) / load.count,
          lookupNs: load.lookupNs,
          fillS: load.fillMs / 1000,
        },
      },
      notes,
    }
  } finally {
    await closeAll(held)
    await Promise.all(nodes.map((n) => n.stop()))
    await cleanupKeys()
    ctx.asyncCleanups.splice(ctx.asyncCleanups.indexOf(cleanupKeys), 1)
  }
}
