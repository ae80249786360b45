// A minimal MQTT 3.1.1 client over node:tls for the load generator: the packets the bench needs, exact timestamps,
// and little CPU of its own, since on two cores the load generator is often the limit.
import tls from 'node:tls'
import { performance } from 'node:perf_hooks'

export const CONNACK = 2
export const PUBLISH = 3
export const PUBACK = 4
export const SUBACK = 9

export const DISCONNECT = Buffer.from([0xe0, 0x00])

function remainingLength (n) {
  const out = []
  do {
    let byte = n % 128
    n = Math.floor(n / 128)
    if (n > 0) byte |= 0x80
    out.push(byte)
  } while (n > 0)
  return out
}

function packet (first, body) {
  return Buffer.concat([Buffer.from([first, ...remainingLength(body.length)]), body])
}

function str (s) {
  const b = Buffer.from(s, 'utf8')
  const out = Buffer.allocUnsafe(2 + b.length)
  out.writeUInt16BE(b.length, 0)
  b.copy(out, 2)
  return out
}

/** CONNECT, clean session, MQTT 3.1.1; keepalive 0 = no pings (idle connections stay silent). */
export function encodeConnect (clientId, keepaliveS = 0) {
  const vh = Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, keepaliveS >> 8, keepaliveS & 0xff])
  return packet(0x10, Buffer.concat([vh, str(clientId)]))
}

export function encodeSubscribe (packetId, filter, qos) {
  const id = Buffer.from([packetId >> 8, packetId & 0xff])
  return packet(0x82, Buffer.concat([id, str(filter), Buffer.from([qos])]))
}

export function encodePuback (packetId) {
  return Buffer.from([0x40, 0x02, packetId >> 8, packetId & 0xff])
}

/**
 * A PUBLISH template for one topic and payload size: fill(buf, offset, packetId) → where the payload starts.
 * Lets a publisher write many messages into one buffer without re-encoding the topic.
 */
export function publishTemplate (topic, payloadBytes, qos) {
  const t = str(topic)
  const bodyLen = t.length + (qos > 0 ? 2 : 0) + payloadBytes
  const head = Buffer.from([0x30 | (qos << 1), ...remainingLength(bodyLen)])
  const size = head.length + bodyLen
  const proto = Buffer.alloc(size)
  head.copy(proto, 0)
  t.copy(proto, head.length)
  const idAt = head.length + t.length
  const payloadAt = idAt + (qos > 0 ? 2 : 0)
  return {
    size,
    payloadAt,
    write (buf, offset, packetId) {
      proto.copy(buf, offset)
      if (qos > 0) buf.writeUInt16BE(packetId, offset + idAt)
      return offset + payloadAt
    },
  }
}

/** Splits a byte stream into MQTT packets: onPacket(type, flags, buf, bodyStart, bodyEnd). */
export class PacketReader {
  constructor (onPacket) {
    this.onPacket = onPacket
    this.rest = null
  }

  push (chunk) {
    const buf = this.rest === null ? chunk : Buffer.concat([this.rest, chunk])
    let off = 0
    for (;;) {
      if (buf.length - off < 2) break
      let len = 0
      let mul = 1
      let i = off + 1
      let byte
      let complete = true
      do {
        if (i >= buf.length) { complete = false; break }
        byte = buf[i++]
        len += (byte & 0x7f) * mul
        mul *= 128
      } while ((byte & 0x80) !== 0)
      if (!complete || buf.length - i < len) break
      this.onPacket(buf[off] >> 4, buf[off] & 0x0f, buf, i, i + len)
      off = i + len
    }
    this.rest = off >= buf.length ? null : Buffer.from(buf.subarray(off))
  }
}

/**
 * Opens one mutual-TLS connection and, with mqtt, sends CONNECT and resolves at CONNACK 0. Resolves with
 * { socket, startedAt, secureAt, readyAt, reused, rc } (times from performance.now()); rejects on a refusal, an error,
 * a close, or timeoutMs. onPacket, if given, sees every packet after CONNACK. socket.setNoDelay(true) is called at
 * once: Node 20 ignores tls.connect's noDelay option, and Nagle would add ~40 ms to small writes.
 */
export function openConnection ({ port, secureContext, session, clientId, mqtt = true, keepaliveS = 0, timeoutMs = 10_000, onPacket, onClose }) {
  return new Promise((resolve, reject) => {
    const startedAt = performance.now()
    let secureAt = NaN
    let settled = false
    const opts = { host: '127.0.0.1', port, secureContext, servername: 'localhost', rejectUnauthorized: true }
    if (session !== undefined && session !== null) opts.session = session
    const socket = tls.connect(opts)
    socket.setNoDelay(true)
    const conn = { socket, startedAt, secureAt, readyAt: NaN, reused: false, session: null, closedAt: NaN }
    socket.on('session', (s) => { conn.session = s })
    const fail = (err) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      reject(err)
    }
    const timer = setTimeout(() => { fail(new Error(`timeout after ${timeoutMs} ms`)) }, timeoutMs)
    socket.on('error', (err) => { fail(err) })
    socket.on('close', () => {
      conn.closedAt = performance.now()
      fail(new Error('closed before ready'))
      onClose?.(conn)
    })
    socket.once('secureConnect', () => {
      secureAt = performance.now()
      conn.secureAt = secureAt
      conn.reused = socket.isSessionReused()
      if (!mqtt) {
        settled = true
        clearTimeout(timer)
        conn.readyAt = secureAt
        resolve(conn)
        return
      }
      socket.write(encodeConnect(clientId, keepaliveS))
    })
    if (!mqtt) return
    const reader = new PacketReader((type, flags, buf, start, end) => {
      if (!settled) {
        if (type !== CONNACK || end - start < 2) { fail(new Error(`expected CONNACK, got packet type ${type}`)); return }
        const rc = buf[start + 1]
        if (rc !== 0) { fail(new Error(`CONNACK ${rc}`)); return }
        settled = true
        clearTimeout(timer)
        conn.readyAt = performance.now()
        resolve(conn)
        return
      }
      onPacket?.(type, flags, buf, start, end)
    })
    socket.on('data', (chunk) => { reader.push(chunk) })
  })
}

/** DISCONNECT (MQTT) and close; resolves when the socket has closed (or after timeoutMs, destroying it). */
export function closeConnection (conn, { mqtt = true, timeoutMs = 5_000 } = {}) {
  const socket = conn.socket
  if (socket.destroyed) return Promise.resolve()
  return new Promise((resolve) => {
    const t = setTimeout(() => { socket.destroy(); resolve() }, timeoutMs)
    socket.once('close', () => { clearTimeout(t); resolve() })
    if (mqtt) socket.end(DISCONNECT)
    else socket.end()
  })
}
