// Workload "connect": new mutual-TLS + MQTT connections, each with its own device certificate, a fixed number in
// flight: connections/s, CONNACK latency, and the broker's CPU per connection (from /proc), then the same devices
// reconnecting with the TLS session they were given (resumption), measured separately.
import { runConnections } from '../lib/load.mjs'
import { cpuMs, sleep } from '../lib/proc.mjs'
import { TARGETS } from '../lib/targets.mjs'

export const name = 'connect'
export const title = 'Connect: new mutual-TLS + MQTT connections'
export const targets = ['zt', 'floor', 'aedes', 'mosquitto']

export function describe (o) {
  return `${o.connectCount} connections, each with its own device certificate, ${o.inFlight} in flight (after ${o.connectWarmup} unmeasured warm-up connections); ` +
    'then the same devices reconnect offering the TLS session ticket they got. The floor completes the TLS handshake only (its "CONNACK" is the end of the handshake). ' +
    'Broker CPU = utime+stime of the broker process over the phase.'
}

export const metrics = {
  cpuPerConn: { label: 'broker CPU per new connection', unit: 'ms', better: 'lower', digits: 3, chart: 'CPU per new connection' },
  connPerSec: { label: 'connections/s', unit: '/s', better: 'higher', digits: 0 },
  connackP50: { label: 'CONNACK p50', unit: 'ms', better: 'lower', digits: 2 },
  connackP99: { label: 'CONNACK p99', unit: 'ms', better: 'lower', digits: 2 },
  cpuPerResumed: { label: 'broker CPU per resumed reconnect', unit: 'ms', better: 'lower', digits: 3 },
  resumedP50: { label: 'resumed CONNACK p50', unit: 'ms', better: 'lower', digits: 2 },
  resumedShare: { label: 'reconnects that resumed the session', unit: '%', better: 'higher', digits: 0 },
  failed: { label: 'failed connections', unit: '', better: 'lower', digits: 0 },
}

/** Targets from the issue, checked on medians. */
export const goals = [
  { metric: 'cpuPerConn', of: 'zt', vs: 'floor', maxRatio: 1.05, text: 'broker CPU per new connection ≤ 1.05× the bare node:tls floor' },
  { metric: 'cpuPerResumed', of: 'zt', vs: { target: 'mosquitto', metric: 'cpuPerConn' }, maxRatio: 0.5, chart: 'resumed reconnect vs Mosquitto full handshake', text: 'broker CPU per resumed reconnect ≤ 0.5× Mosquitto\'s full handshake' },
  { metric: 'failed', of: 'zt', max: 0, text: 'no failed connections' },
  // Proposed in issue 6's closing notes: what a plugin on Aedes controls (plain Aedes alone is 1.03-1.4× the floor).
  { metric: 'cpuPerConn', of: 'zt', vs: 'aedes', maxRatio: 1.1, proposed: true, text: 'proposed: broker CPU per new connection ≤ 1.1× plain Aedes with hand-written auth' },
]

export async function run (ctx, key) {
  const T = TARGETS[key]
  const o = ctx.opts
  const all = ctx.pki.devices
  const creds = all.slice(0, o.connectCount)
  const warm = all.slice(all.length - o.connectWarmup)
  ctx.pki.warmContexts(0, o.connectCount)
  ctx.pki.warmContexts(all.length - o.connectWarmup, all.length)
  const b = await T.start(ctx)
  try {
    const common = { port: b.port, mqtt: T.mqtt, contextFor: ctx.pki.contextFor, inFlight: o.inFlight, deadlineMs: o.phaseDeadlineMs }
    await runConnections({ ...common, creds: warm })
    await sleep(300)
    const c0 = cpuMs(b.pid)
    const full = await runConnections({ ...common, creds, keepSessions: true })
    await sleep(300)
    const c1 = cpuMs(b.pid)
    const resumed = await runConnections({ ...common, creds, sessions: full.sessions })
    await sleep(300)
    const c2 = cpuMs(b.pid)
    const offered = full.sessions.filter((s) => s !== null).length
    const notes = [`${key}: ${full.tls}; reconnects: ${resumed.tls}`]
    if (full.failed > 0) notes.push(`${key}: ${full.failed} connections failed: ${JSON.stringify(full.errors)}`)
    if (resumed.failed > 0) notes.push(`${key}: ${resumed.failed} resumed reconnects failed: ${JSON.stringify(resumed.errors)}`)
    if (offered < creds.length) notes.push(`${key}: the server gave a TLS session ticket to ${offered} of ${creds.length} connections`)
    return {
      values: {
        cpuPerConn: (c1 - c0) / Math.max(1, full.ok),
        connPerSec: full.perSecond,
        connackP50: full.p50,
        connackP99: full.p99,
        cpuPerResumed: (c2 - c1) / Math.max(1, resumed.ok),
        resumedP50: resumed.p50,
        resumedShare: (100 * resumed.reused) / Math.max(1, resumed.ok),
        failed: full.failed + resumed.failed,
      },
      notes,
    }
  } finally {
    await b.stop()
  }
}
