// Test helpers: a broker on port 0 with a captured audit log, and mqtt.js clients that report how a CONNECT ended.
import { Writable } from 'node:stream'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { resolveConfig, type ConfigInput } from '../../broker/config.js'
import { startBroker, type RunningBroker } from '../../broker/server.js'

export interface LogLine {
  level: number
  event?: string
  id?: string | null
  serial?: string | null
  reason?: string
  [key: string]: unknown
}

/** A pino destination that keeps every JSON line, so tests can assert on audit events. */
export class LogCapture extends Writable {
  readonly lines: LogLine[] = []
  #pending = ''
  #waiters: Array<() => void> = []

  override _write (chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.#pending += chunk.toString('utf8')
    let nl
    while ((nl = this.#pending.indexOf('\n')) >= 0) {
      const line = this.#pending.slice(0, nl)
      this.#pending = this.#pending.slice(nl + 1)
      if (line.trim() !== '') this.lines.push(JSON.parse(line) as LogLine)
    }
    for (const w of this.#waiters.splice(0)) w()
    cb()
  }

  find (pred: (l: LogLine) => boolean): LogLine | undefined {
    return this.lines.find(pred)
  }

  /** Resolves with the first line (already logged or to come) matching pred. */
  async waitFor (pred: (l: LogLine) => boolean, timeoutMs = 5000): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const hit = this.find(pred)
      if (hit !== undefined) return hit
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no log line matched within ${timeoutMs} ms; last events: ${this.lines.slice(-8).map((l) => `${l.event ?? '?'}:${l.reason ?? ''}`).join(', ')}`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 200))
        this.#waiters.push(() => { clearTimeout(t); resolve() })
      })
    }
  }
}

export interface TestBroker {
  broker: RunningBroker
  logs: LogCapture
  port: number
  url: string
  close (): Promise<void>
}

/** A broker on the given test CA home, MQTT and HTTP on port 0, log captured. */
export async function startTestBroker (home: string, overrides: ConfigInput = {}): Promise<TestBroker> {
  const logs = new LogCapture()
  const config = resolveConfig({ env: {}, overrides: { home, port: 0, httpPort: 0, host: '127.0.0.1', logLevel: 'info', ...overrides } })
  const broker = await startBroker(config, { logStream: logs })
  return { broker, logs, port: broker.port, url: `mqtts://127.0.0.1:${broker.port}`, close: () => broker.close() }
}

export interface Credentials {
  certPem: string
  keyPem: string
}

/** TLS options for a client holding `cred` and trusting the home's root (as `--cafile ca.pem` does). */
export function tlsFor (caPem: string, cred?: Credentials): IClientOptions {
  const o: IClientOptions = { ca: caPem, rejectUnauthorized: true, servername: 'localhost' }
  if (cred !== undefined) { o.cert = cred.certPem; o.key = cred.keyPem }
  return o
}

export interface ConnectOutcome {
  client: MqttClient
  /** CONNACK return code when the broker answered, else undefined. */
  code?: number | undefined
  connected: boolean
  error?: Error | undefined
}

/** Connects once (no reconnect) and reports whether it was accepted, refused with a CONNACK code, or cut at TLS. */
export async function tryConnect (url: string, opts: IClientOptions, timeoutMs = 5000): Promise<ConnectOutcome> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: timeoutMs, protocolVersion: 4, ...opts })
  return await new Promise<ConnectOutcome>((resolve) => {
    let done = false
    const finish = (o: Omit<ConnectOutcome, 'client'>): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      resolve({ client, ...o })
    }
    const timer = setTimeout(() => { finish({ connected: false, error: new Error('timeout') }) }, timeoutMs + 500)
    client.once('connect', () => { finish({ connected: true, code: 0 }) })
    client.on('error', (err: Error & { code?: unknown }) => {
      finish({ connected: false, error: err, code: typeof err.code === 'number' ? err.code : undefined })
    })
    client.once('close', () => { finish({ connected: false }) })
  })
}

/** Connects and resolves with a connected client, or throws with how it failed. */
export async function connectOk (url: string, opts: IClientOptions): Promise<MqttClient> {
  const o = await tryConnect(url, opts)
  if (!o.connected) {
    o.client.end(true)
    throw new Error(`connect failed: code ${String(o.code)} ${o.error?.message ?? 'closed'}`)
  }
  return o.client
}

export async function endClient (client: MqttClient | undefined): Promise<void> {
  if (client === undefined) return
  await new Promise<void>((resolve) => { client.end(true, {}, () => { resolve() }) })
}

/** Resolves with the next message on `topic`, or null after timeoutMs. */
export function nextMessage (client: MqttClient, topic: string, timeoutMs = 2000): Promise<{ payload: Buffer, retain: boolean, qos: number } | null> {
  return new Promise((resolve) => {
    const onMessage = (t: string, payload: Buffer, packet: { retain: boolean, qos: number }): void => {
      if (t !== topic) return
      clearTimeout(timer)
      client.off('message', onMessage)
      resolve({ payload, retain: packet.retain, qos: packet.qos })
    }
    const timer = setTimeout(() => { client.off('message', onMessage); resolve(null) }, timeoutMs)
    client.on('message', onMessage)
  })
}

// ---- raw MQTT 3.1.1 for hostile clients: byte-exact packets mqtt.js would refuse to send -----------------------------

function varLen (n: number): Buffer {
  const out: number[] = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
  return Buffer.from(out)
}

function mqttString (s: string | Buffer): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s
  const len = Buffer.alloc(2)
  len.writeUInt16BE(b.length)
  return Buffer.concat([len, b])
}

export function packet (firstByte: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([firstByte]), varLen(body.length), body])
}

export interface RawConnect {
  clientId?: string
  clean?: boolean
  keepalive?: number
  protocolLevel?: number
  will?: { topic: string | Buffer, payload: string, qos?: number, retain?: boolean }
}

export function connectPacket (o: RawConnect = {}): Buffer {
  let flags = o.clean === false ? 0 : 0x02
  if (o.will !== undefined) flags |= 0x04 | ((o.will.qos ?? 0) << 3) | (o.will.retain === true ? 0x20 : 0)
  const ka = Buffer.alloc(2)
  ka.writeUInt16BE(o.keepalive ?? 30)
  const level = o.protocolLevel ?? 4
  const parts = [mqttString('MQTT'), Buffer.from([level, flags]), ka]
  if (level === 5) parts.push(Buffer.from([0])) // empty CONNECT properties
  parts.push(mqttString(o.clientId ?? ''))
  if (o.will !== undefined) {
    if (level === 5) parts.push(Buffer.from([0])) // empty will properties
    parts.push(mqttString(o.will.topic), mqttString(Buffer.from(o.will.payload)))
  }
  return packet(0x10, Buffer.concat(parts))
}

export function publishPacket (topic: string | Buffer, payload: string | Buffer, qos = 0, messageId = 1): Buffer {
  const parts = [mqttString(topic)]
  if (qos > 0) { const id = Buffer.alloc(2); id.writeUInt16BE(messageId); parts.push(id) }
  parts.push(typeof payload === 'string' ? Buffer.from(payload) : payload)
  return packet(0x30 | (qos << 1), Buffer.concat(parts))
}

export function subscribePacket (filter: string | Buffer, qos = 0, messageId = 1): Buffer {
  const id = Buffer.alloc(2)
  id.writeUInt16BE(messageId)
  return packet(0x82, Buffer.concat([id, mqttString(filter), Buffer.from([qos])]))
}

export interface RawClient {
  socket: import('node:tls').TLSSocket
  received: Buffer[]
  /** TLS session tickets the server sent (for resumption tests). */
  sessions: Buffer[]
  closed: Promise<void>
  isClosed (): boolean
  /** Resolves with the first received packet's bytes whose type nibble matches, or null after timeoutMs. */
  waitFor (type: number, timeoutMs?: number): Promise<Buffer | null>
}

/** A TLS socket to the broker, connected and verified, with received bytes recorded. */
export async function rawTls (port: number, opts: import('node:tls').ConnectionOptions): Promise<RawClient> {
  const tls = await import('node:tls')
  const socket = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', ...opts })
  let closed = false
  const received: Buffer[] = []
  const sessions: Buffer[] = []
  socket.on('data', (d: Buffer) => { received.push(d) })
  socket.on('session', (s: Buffer) => { sessions.push(s) })
  socket.on('error', () => {})
  const closedP = new Promise<void>((resolve) => { socket.on('close', () => { closed = true; resolve() }) })
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => { resolve() })
    socket.once('error', reject)
  })
  return {
    socket,
    received,
    sessions,
    closed: closedP,
    isClosed: () => closed,
    async waitFor (type, timeoutMs = 2000) {
      const deadline = Date.now() + timeoutMs
      while (Date.now() < deadline) {
        const all = Buffer.concat(received)
        if (all.length > 0 && (all[0] as number) >> 4 === type) return all
        if (closed) return null
        await new Promise((r) => setTimeout(r, 20))
      }
      return null
    },
  }
}

/** Whether the socket closes within timeoutMs. */
export async function closesWithin (raw: RawClient, timeoutMs = 3000): Promise<boolean> {
  if (raw.isClosed()) return true
  return await Promise.race([raw.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => { r(false) }, timeoutMs))])
}
