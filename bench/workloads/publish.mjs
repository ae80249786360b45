// Workload "publish": 20 devices publish 64-byte messages on their own topics to one service subscribed to
// devices/+/telemetry; QoS 0 and 1, closed loop (max throughput) and open loop at a fixed rate (latency).
import { performance } from 'node:perf_hooks'
import { PUBACK, PUBLISH, SUBACK, encodePuback, encodeSubscribe, openConnection, publishTemplate, closeConnection } from '../lib/mqtt.mjs'
import { deviceId } from '../lib/pki.mjs'
import { cpuMs, sleep } from '../lib/proc.mjs'
import { Samples } from '../lib/stats.mjs'
import { TARGETS } from '../lib/targets.mjs'

export const name = 'publish'
export const title = 'Publish: 20 devices → 1 service subscriber, 64-byte messages'
export const targets = ['zt', 'aedes', 'mosquitto']

const PAYLOAD = 64

export function describe (o) {
  return `${o.publishers} device connections publish on devices/<id>/telemetry, one service connection subscribed to devices/+/telemetry (QoS 1 subscription; ` +
    'a QoS 0 publish is delivered at QoS 0). Closed loop: each publisher keeps at most ' +
    `${o.window} messages in flight end to end (sent, not yet received by the subscriber): max throughput. Open loop: ${o.rate} msg/s in total on a fixed schedule, ` +
    'latency measured from the scheduled send time (no coordinated omission). ' +
    `Each phase: ${o.publishWarmupMs} ms warm-up, ${o.publishMs} ms measured, then up to ${o.drainMs} ms for stragglers; lost = sent in the measured window − received. ` +
    'Broker CPU per delivered message = broker utime+stime over the measured window ÷ messages delivered in it. Not applicable to the floor (no MQTT). ' +
    'The load generator writes what is due in one socket write per publisher per event-loop turn and acks QoS 1 deliveries per read, as a busy client does.'
}

const PHASES = [
  { key: 'q0c', qos: 0, mode: 'closed', label: 'QoS 0 max throughput' },
  { key: 'q1c', qos: 1, mode: 'closed', label: 'QoS 1 max throughput' },
  { key: 'q0o', qos: 0, mode: 'open', label: 'QoS 0 fixed rate' },
  { key: 'q1o', qos: 1, mode: 'open', label: 'QoS 1 fixed rate' },
]

export const metrics = {
  q0cRate: { label: 'QoS 0 max throughput, delivered', unit: 'msg/s', better: 'higher', digits: 0 },
  q0cCpu: { label: 'QoS 0 broker CPU per delivered message (max throughput)', unit: 'µs', better: 'lower', digits: 2, chart: 'CPU per message, QoS 0' },
  q0cP50: { label: 'QoS 0 latency p50 (max throughput)', unit: 'ms', better: 'lower', digits: 2 },
  q0cP99: { label: 'QoS 0 latency p99 (max throughput)', unit: 'ms', better: 'lower', digits: 2 },
  q0cLost: { label: 'QoS 0 lost (max throughput)', unit: '', better: 'lower', digits: 0 },
  q1cRate: { label: 'QoS 1 max throughput, delivered', unit: 'msg/s', better: 'higher', digits: 0 },
  q1cCpu: { label: 'QoS 1 broker CPU per delivered message (max throughput)', unit: 'µs', better: 'lower', digits: 2, chart: 'CPU per message, QoS 1' },
  q1cP50: { label: 'QoS 1 latency p50 (max throughput)', unit: 'ms', better: 'lower', digits: 2 },
  q1cP99: { label: 'QoS 1 latency p99 (max throughput)', unit: 'ms', better: 'lower', digits: 2 },
  q1cLost: { label: 'QoS 1 lost (max throughput)', unit: '', better: 'lower', digits: 0 },
  q0oRate: { label: 'QoS 0 fixed rate, delivered', unit: 'msg/s', better: 'higher', digits: 0 },
  q0oCpu: { label: 'QoS 0 broker CPU per delivered message (fixed rate)', unit: 'µs', better: 'lower', digits: 2 },
  q0oP50: { label: 'QoS 0 latency p50 (fixed rate)', unit: 'ms', better: 'lower', digits: 2 },
  q0oP99: { label: 'QoS 0 latency p99 (fixed rate)', unit: 'ms', better: 'lower', digits: 2 },
  q0oLost: { label: 'QoS 0 lost (fixed rate)', unit: '', better: 'lower', digits: 0 },
  q1oRate: { label: 'QoS 1 fixed rate, delivered', unit: 'msg/s', better: 'higher', digits: 0 },
  q1oCpu: { label: 'QoS 1 broker CPU per delivered message (fixed rate)', unit: 'µs', better: 'lower', digits: 2 },
  q1oP50: { label: 'QoS 1 latency p50 (fixed rate)', unit: 'ms', better: 'lower', digits: 2 },
  q1oP99: { label: 'QoS 1 latency p99 (fixed rate)', unit: 'ms', better: 'lower', digits: 2 },
  q1oLost: { label: 'QoS 1 lost (fixed rate)', unit: '', better: 'lower', digits: 0 },
}
for (const k of Object.keys(metrics)) if (k.endsWith('Lost')) metrics[k].noRatio = true

export const goals = [
  { metric: 'q0cCpu', of: 'zt', vs: 'aedes', maxRatio: 1.0, text: 'QoS 0: broker CPU per message ≤ plain Aedes with a prefix check' },
  { metric: 'q1cCpu', of: 'zt', vs: 'aedes', maxRatio: 1.0, text: 'QoS 1: broker CPU per message ≤ plain Aedes with a prefix check' },
  { metric: 'q0cCpu', of: 'zt', vs: 'mosquitto', maxRatio: 1.3, text: 'QoS 0: broker CPU per message ≤ 1.3× Mosquitto' },
  { metric: 'q1cCpu', of: 'zt', vs: 'mosquitto', maxRatio: 1.3, text: 'QoS 1: broker CPU per message ≤ 1.3× Mosquitto' },
  ...PHASES.map((p) => ({ metric: `${p.key}Lost`, of: 'zt', max: 0, text: `${p.label}: zero messages lost` })),
]

/** A connection that counts what it gets: PUBACKs for a publisher, deliveries for the subscriber. */
async function connect (port, cred, contextFor, onPacket) {
  return openConnection({ port, secureContext: contextFor(cred), clientId: cred.id, onPacket, timeoutMs: 10_000 })
}

export async function run (ctx, key) {
  const T = TARGETS[key]
  const o = ctx.opts
  const pubCreds = Array.from({ length: o.publishers }, (_, i) => ctx.pki.devices[i])
  const b = await T.start(ctx)
  const conns = []
  try {
    // ---- phase state, shared by the subscriber's handler and the senders ----------------------------------------
    let phaseTag = 0
    let mode = 'closed'
    let sending = false
    let measuring = false
    let measureFrom = Infinity // open loop: scheduled send times in [measureFrom, measureTo) are measured
    let measureTo = -Infinity
    let seqs = new Uint32Array(o.publishers) // next seq per publisher
    let measuredSeqFrom = new Uint32Array(o.publishers) // closed loop: seqs in [from, to) are measured
    let measuredSeqTo = new Uint32Array(o.publishers)
    let templates = []
    let windowReceived = 0
    let latency = new Samples(1 << 16)
    let recvMeasured = 0
    let lastRecvAt = performance.now()
    let onCredit = null
    const outstanding = new Int32Array(o.publishers)
    const pendingCredit = new Int32Array(o.publishers)
    const received = [] // per publisher: bitmap of the seqs received in the current phase
    const pubs = []
    const seqMeasured = (pub, seq) => seq >= measuredSeqFrom[pub] && seq < measuredSeqTo[pub]

    // ---- subscriber ---------------------------------------------------------------------------------------------
    let subackResolve
    const suback = new Promise((resolve) => { subackResolve = resolve })
    const ackBuf = []
    const sub = await connect(b.port, ctx.pki.service, ctx.pki.contextFor, (type, flags, buf, start, end) => {
      if (type === PUBLISH) {
        const qos = (flags >> 1) & 3
        const tlen = buf.readUInt16BE(start)
        let p = start + 2 + tlen
        if (qos > 0) { ackBuf.push(encodePuback(buf.readUInt16BE(p))); p += 2 }
        if (end - p < 16) return
        const tag = buf[p]
        const pub = buf[p + 1]
        const seq = buf.readUInt32BE(p + 2)
        const sentAt = buf.readDoubleBE(p + 8)
        const now = performance.now()
        lastRecvAt = now
        if (measuring) windowReceived++
        if (tag !== phaseTag || pub >= o.publishers) return
        outstanding[pub]--
        const seen = received[pub]
        if (seq < seen.length * 8 && (seen[seq >> 3] & (1 << (seq & 7))) === 0) {
          seen[seq >> 3] |= 1 << (seq & 7)
          if ((sentAt >= measureFrom && sentAt < measureTo) || (mode === 'closed' && seqMeasured(pub, seq))) {
            recvMeasured++
            latency.push(now - sentAt)
          }
        }
        onCredit?.(pub)
      } else if (type === SUBACK) {
        subackResolve(buf[end - 1])
      }
    })
    conns.push(sub)
    sub.socket.on('data', () => {
      // PUBACKs for one read go out in one write (the data handler above has run for every packet in it).
      if (ackBuf.length > 0) sub.socket.write(ackBuf.length === 1 ? ackBuf[0] : Buffer.concat(ackBuf.splice(0)))
      ackBuf.length = 0
      flushAll()
    })
    sub.socket.write(encodeSubscribe(1, 'devices/+/telemetry', 1))
    const granted = await Promise.race([suback, sleep(5_000).then(() => 'timeout')])
    if (granted !== 1 && granted !== 0) throw new Error(`subscription to devices/+/telemetry refused (SUBACK ${granted})`)

    // ---- publishers ---------------------------------------------------------------------------------------------
    for (let i = 0; i < o.publishers; i++) {
      const st = { i, conn: null, pubacks: 0, nextId: 1, due: 0 }
      st.conn = await connect(b.port, pubCreds[i], ctx.pki.contextFor, (type) => { if (type === PUBACK) st.pubacks++ })
      conns.push(st.conn)
      pubs.push(st)
    }
    const topics = pubCreds.map((c) => `devices/${c.id}/telemetry`)


    function send (st, n, scheduledAt, interval) {
      if (n <= 0 || st.conn.socket.destroyed) return 0
      const tpl = templates[st.i]
      const buf = Buffer.allocUnsafe(tpl.size * n)
      let off = 0
      for (let k = 0; k < n; k++) {
        const p = tpl.write(buf, off, st.nextId)
        st.nextId = st.nextId === 65535 ? 1 : st.nextId + 1
        buf[p] = phaseTag
        buf[p + 1] = st.i
        buf.writeUInt32BE(seqs[st.i]++, p + 2)
        buf.fill(0, p + 6, p + 8)
        buf.writeDoubleBE(scheduledAt === undefined ? performance.now() : scheduledAt + k * interval, p + 8)
        buf.fill(0x61, p + 16, p + PAYLOAD)
        off += tpl.size
      }
      st.conn.socket.write(buf)
      outstanding[st.i] += n
      return n
    }

    function flushAll () {
      if (!sending || mode !== 'closed') return
      for (const st of pubs) {
        const n = Math.min(pendingCredit[st.i], o.window - outstanding[st.i])
        pendingCredit[st.i] = 0
        if (n > 0) send(st, n)
      }
    }

    const results = {}
    for (const phase of PHASES) {
      phaseTag = (phaseTag + 1) & 0xff
      mode = phase.mode
      templates = topics.map((t) => publishTemplate(t, PAYLOAD, phase.qos))
      const maxSeq = Math.ceil(((phase.mode === 'open' ? o.rate / o.publishers : 200_000) * (o.publishWarmupMs + o.publishMs + 1000)) / 1000) + 1024
      received.length = 0
      for (let i = 0; i < o.publishers; i++) received.push(new Uint8Array(Math.ceil(maxSeq / 8)))
      outstanding.fill(0)
      seqs = new Uint32Array(o.publishers)
      measuredSeqFrom = new Uint32Array(o.publishers).fill(0xffffffff)
      measuredSeqTo = new Uint32Array(o.publishers).fill(0xffffffff)
      measureFrom = Infinity
      measureTo = -Infinity
      latency = new Samples(1 << 16)
      recvMeasured = 0
      windowReceived = 0
      const pubacks0 = pubs.reduce((s, p) => s + p.pubacks, 0)
      let sentMeasured = 0

      const start = performance.now()
      const boundary = start + o.publishWarmupMs
      const stopAt = boundary + o.publishMs
      let cpu0 = NaN
      let cpu1 = NaN
      let windowEnd = NaN
      sending = true

      if (phase.mode === 'closed') {
        onCredit = (pub) => { pendingCredit[pub]++ }
        for (const st of pubs) send(st, o.window)
        // Stall guard: a lost message would hold a window slot forever; a quiet second frees the slots.
        while (performance.now() < stopAt) {
          const now = performance.now()
          if (!measuring && now >= boundary) {
            cpu0 = cpuMs(b.pid)
            measuring = true
            for (let i = 0; i < o.publishers; i++) measuredSeqFrom[i] = seqs[i]
          }
          if (now - lastRecvAt > 1_000) { outstanding.fill(0); for (const st of pubs) send(st, o.window); lastRecvAt = now }
          await sleep(Math.max(1, Math.min(50, (measuring ? stopAt : boundary) - now)))
        }
        cpu1 = cpuMs(b.pid)
        windowEnd = performance.now()
        measuring = false
        for (let i = 0; i < o.publishers; i++) measuredSeqTo[i] = seqs[i]
        sending = false
        onCredit = null
        for (let i = 0; i < o.publishers; i++) sentMeasured += measuredSeqTo[i] - measuredSeqFrom[i]
      } else {
        onCredit = null
        const interval = 1000 / o.rate
        let scheduled = 0 // messages scheduled so far (all publishers)
        const perTick = new Int32Array(o.publishers)
        while (performance.now() < stopAt) {
          const now = performance.now()
          if (!measuring && now >= boundary) {
            cpu0 = cpuMs(b.pid)
            measuring = true
            measureFrom = start + Math.ceil((boundary - start) / interval) * interval
            measureTo = stopAt
          }
          const due = Math.floor((now - start) / interval) + 1
          if (due > scheduled) {
            // Round-robin over publishers; each publisher's due messages go out in one write.
            perTick.fill(0)
            const firstAt = scheduled
            for (let k = scheduled; k < due; k++) perTick[k % o.publishers]++
            for (const st of pubs) {
              const n = perTick[st.i]
              if (n === 0) continue
              // The k-th message of this publisher in the tick is global message firstK + j*publishers.
              const firstK = firstAt + ((st.i - (firstAt % o.publishers) + o.publishers) % o.publishers)
              send(st, n, start + firstK * interval, interval * o.publishers)
            }
            for (let k = scheduled; k < due; k++) {
              const at = start + k * interval
              if (at >= measureFrom && at < measureTo) sentMeasured++
            }
            scheduled = due
          }
          await sleep(1)
        }
        cpu1 = cpuMs(b.pid)
        windowEnd = performance.now()
        measuring = false
        sending = false
      }
      // Drain: wait for stragglers (bounded), then count what never came.
      const drainUntil = performance.now() + o.drainMs
      while (performance.now() < drainUntil && recvMeasured < sentMeasured) await sleep(20)
      await sleep(50)
      const windowS = (windowEnd - boundary) / 1000
      results[`${phase.key}Rate`] = windowReceived / windowS
      results[`${phase.key}Cpu`] = windowReceived > 0 ? ((cpu1 - cpu0) * 1000) / windowReceived : NaN
      results[`${phase.key}P50`] = latency.p(50)
      results[`${phase.key}P99`] = latency.p(99)
      results[`${phase.key}Lost`] = Math.max(0, sentMeasured - recvMeasured)
      results[`${phase.key}Pubacks`] = pubs.reduce((s, p) => s + p.pubacks, 0) - pubacks0
      ctx.log(`  ${phase.label}: ${Math.round(results[`${phase.key}Rate`])} msg/s, ${results[`${phase.key}Cpu`].toFixed(2)} µs/msg, p50 ${latency.p(50).toFixed(2)} ms, p99 ${latency.p(99).toFixed(2)} ms, lost ${results[`${phase.key}Lost`]} of ${sentMeasured}`)
      // Let the broker settle before the next phase.
      await sleep(200)
    }
    const dead = conns.filter((c) => c.socket.destroyed).length
    const notes = dead > 0 ? [`${key}: ${dead} of ${conns.length} connections were closed during the run`] : []
    return { values: results, notes }
  } finally {
    await Promise.all(conns.map((c) => closeConnection(c, { timeoutMs: 2_000 })))
    await b.stop()
  }
}
