// Workload "idle": many idle mutual-TLS (+ MQTT) connections held open: the broker's resident memory per connection.
import { closeAll, runConnections } from '../lib/load.mjs'
import { cpuMs, rssKb, sleep } from '../lib/proc.mjs'
import { TARGETS } from '../lib/targets.mjs'

export const name = 'idle'
export const title = 'Idle: memory per idle mutual-TLS connection'
export const targets = ['zt', 'floor', 'aedes', 'mosquitto']

export function describe (o) {
  return `${o.idleCount} connections held open (MQTT keepalive 0, so nothing is sent), each with its own certificate. ` +
    'RSS (VmRSS) is read after 100 warm-up connections were opened and closed and again once all are open, ' +
    `each after a ${o.idleSettleMs} ms pause; the difference is divided by the number of connections.`
}

export const metrics = {
  rssPerConn: { label: 'broker RSS per idle connection', unit: 'KiB', better: 'lower', digits: 1, chart: 'RSS per idle connection' },
  rssBase: { label: 'broker RSS before connections', unit: 'MiB', better: 'lower', digits: 1 },
  rssLoaded: { label: 'broker RSS with all connections', unit: 'MiB', better: 'lower', digits: 1 },
  cpuPerConn: { label: 'broker CPU per connection (setup)', unit: 'ms', better: 'lower', digits: 3 },
  failed: { label: 'failed or dropped connections', unit: '', better: 'lower', digits: 0 },
}

export const goals = [
  { metric: 'rssPerConn', of: 'zt', vs: 'floor', maxRatio: 1.05, text: 'broker memory per idle mutual-TLS connection ≤ 1.05× the bare node:tls floor' },
  // Proposed in issue 6's closing notes: what a plugin on Aedes controls.
  { metric: 'rssPerConn', of: 'zt', vs: 'aedes', maxRatio: 1.05, proposed: true, text: 'proposed: broker memory per idle mutual-TLS connection ≤ 1.05× plain Aedes with hand-written auth' },
]

export async function run (ctx, key) {
  const T = TARGETS[key]
  const o = ctx.opts
  const all = ctx.pki.devices
  const creds = all.slice(0, o.idleCount)
  const warm = all.slice(all.length - 100)
  ctx.pki.warmContexts(0, o.idleCount)
  ctx.pki.warmContexts(all.length - 100, all.length)
  const b = await T.start(ctx)
  let held = []
  try {
    const common = { port: b.port, mqtt: T.mqtt, contextFor: ctx.pki.contextFor, inFlight: o.inFlight, deadlineMs: o.phaseDeadlineMs }
    await runConnections({ ...common, creds: warm })
    await sleep(o.idleSettleMs)
    const r0 = rssKb(b.pid)
    const c0 = cpuMs(b.pid)
    const res = await runConnections({ ...common, creds, hold: true })
    held = res.held
    await sleep(o.idleSettleMs)
    const r1 = rssKb(b.pid)
    const c1 = cpuMs(b.pid)
    const dropped = held.filter((c) => c.socket.destroyed || !c.socket.writable).length
    const notes = []
    if (res.failed > 0) notes.push(`${key}: ${res.failed} connections failed: ${JSON.stringify(res.errors)}`)
    if (dropped > 0) notes.push(`${key}: ${dropped} held connections were closed by the server while idle`)
    return {
      values: {
        rssPerConn: (r1 - r0) / Math.max(1, res.ok - dropped),
        rssBase: r0 / 1024,
        rssLoaded: r1 / 1024,
        cpuPerConn: (c1 - c0) / Math.max(1, res.ok),
        failed: res.failed + dropped,
      },
      notes,
    }
  } finally {
    await closeAll(held, { mqtt: T.mqtt })
    await b.stop()
  }
}
