// Connection load: many mutual-TLS (+ MQTT) connections with a fixed number in flight, each with its own certificate.
import { performance } from 'node:perf_hooks'
import { closeConnection, openConnection } from './mqtt.mjs'
import { Samples } from './stats.mjs'

/**
 * Opens one connection per credential in `creds` (index order), `inFlight` at a time. With hold, connections stay
 * open and are returned; otherwise each is closed (DISCONNECT) as soon as it is ready, and its TLS session kept when
 * keepSessions is set. sessions[i], if given, is offered for resumption. Bounded: each connection by timeoutMs, the
 * whole phase by deadlineMs (the rest are then counted as failed).
 */
export async function runConnections ({ port, mqtt, creds, contextFor, inFlight = 50, hold = false, keepSessions = false, sessions, timeoutMs = 10_000, deadlineMs = 300_000 }) {
  const latency = new Samples(creds.length)
  const held = []
  const kept = keepSessions ? new Array(creds.length).fill(null) : null
  const errors = new Map()
  const background = []
  let tls = null
  let failed = 0
  let reused = 0
  let next = 0
  let lastReady = NaN
  const t0 = performance.now()
  const deadline = t0 + deadlineMs

  const one = async (i) => {
    const cred = creds[i]
    const conn = await openConnection({
      port,
      secureContext: contextFor(cred),
      session: sessions?.[i] ?? undefined,
      clientId: cred.id,
      mqtt,
      timeoutMs,
    })
    conn.cred = cred
    if (tls === null) {
      const eph = conn.socket.getEphemeralKeyInfo()
      tls = `${conn.socket.getProtocol()} ${conn.socket.getCipher()?.standardName ?? '?'}${eph?.name === undefined ? '' : ` ${eph.name}`}${conn.reused ? ' (resumed)' : ''}`
    }
    latency.push(conn.readyAt - conn.startedAt)
    lastReady = conn.readyAt
    if (conn.reused) reused++
    if (hold) { held.push(conn); return }
    if (keepSessions && conn.session === null) {
      // A TLS 1.3 ticket arrives after the handshake (for the floor, after the point we call ready): wait for it
      // off the in-flight budget, so setting up the next connection does not wait on it.
      background.push((async () => {
        await new Promise((resolve) => {
          const t = setTimeout(resolve, 1_000)
          conn.socket.once('session', () => { clearTimeout(t); setImmediate(resolve) })
        })
        kept[i] = conn.session
        await closeConnection(conn, { mqtt })
      })())
      return
    }
    if (kept !== null) kept[i] = conn.session
    await closeConnection(conn, { mqtt })
  }

  const worker = async () => {
    while (next < creds.length) {
      const i = next++
      if (performance.now() > deadline) { failed++; errors.set('phase deadline', (errors.get('phase deadline') ?? 0) + 1); continue }
      try {
        await one(i)
      } catch (err) {
        failed++
        const key = String(err?.code ?? err?.message ?? err).slice(0, 80)
        errors.set(key, (errors.get(key) ?? 0) + 1)
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(inFlight, creds.length) }, worker))
  const wallMs = (Number.isFinite(lastReady) ? lastReady : performance.now()) - t0
  await Promise.all(background)
  return {
    ok: creds.length - failed,
    failed,
    errors: Object.fromEntries(errors),
    reused,
    wallMs,
    perSecond: ((creds.length - failed) * 1000) / wallMs,
    p50: latency.p(50),
    p99: latency.p(99),
    held,
    sessions: kept,
    /** Protocol, cipher and key exchange of the first connection. */
    tls,
  }
}

/** Closes held connections, `inFlight` at a time. */
export async function closeAll (conns, { mqtt = true, inFlight = 200 } = {}) {
  let next = 0
  const worker = async () => {
    while (next < conns.length) await closeConnection(conns[next++], { mqtt, timeoutMs: 2_000 })
  }
  await Promise.all(Array.from({ length: Math.min(inFlight, conns.length) }, worker))
}
