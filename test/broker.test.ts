// Integration: real TLS on port 0, real mqtt.js clients; every admission rule with its CONNACK (or TLS failure) and audit line.
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { TLSSocket } from 'node:tls'
import { promisify } from 'node:util'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { forge, foreignIssuer, loadIssuer, type Issuer } from './helpers/forge.js'
import {
  connectOk, connectPacket, endClient, nextMessage, rawTls, startTestBroker, tlsFor, tryConnect,
  type Credentials, type LogLine, type TestBroker,
} from './helpers/mqtt.js'
import { makeTestCa, TEST_PASSPHRASE, type TestCa } from './helpers/pki.js'

const run = promisify(execFile)

let ca: TestCa
let b: TestBroker
let caPem: string
let issuer: Issuer
const open: MqttClient[] = []

beforeAll(async () => {
  ca = await makeTestCa()
  issuer = await loadIssuer(ca.home, TEST_PASSPHRASE)
  caPem = readFileSync(path.join(ca.home, 'ca.pem'), 'utf8')
  b = await startTestBroker(ca.home)
})
afterAll(async () => {
  await Promise.all(open.map(endClient))
  await b?.close()
  await ca?.cleanup()
})

function keep (c: MqttClient): MqttClient { open.push(c); return c }

async function device (id: string, groups?: string[], kind: 'device' | 'service' | 'operator' = 'device'): Promise<Credentials & { serial: string }> {
  return await ca.issueDevice(id, { kind, ...(groups === undefined ? {} : { groups }) })
}

/** The audit line for a refused CONNECT with this reason (and serial when given). */
async function refusedLine (reason: string, serial?: string): Promise<LogLine> {
  return await b.logs.waitFor((l) => l.event === 'connect.refused' && l.reason === reason && (serial === undefined || l.serial === serial))
}

describe('admitted', () => {
  test('a device with its certificate connects and round-trips QoS 0 and 1 under its own topics', async () => {
    const dev = await device('rt-1')
    const c = keep(await connectOk(b.url, { ...tlsFor(caPem, dev), clientId: 'rt-1' }))
    const granted = await c.subscribeAsync('devices/rt-1/#', { qos: 1 })
    expect(granted[0]?.qos).toBe(1)
    for (const qos of [0, 1] as const) {
      const got = nextMessage(c, `devices/rt-1/q${qos}`)
      await c.publishAsync(`devices/rt-1/q${qos}`, `hello ${qos}`, { qos })
      expect((await got)?.payload.toString()).toBe(`hello ${qos}`)
    }
    const line = await b.logs.waitFor((l) => l.event === 'connect.accepted' && l.id === 'rt-1')
    expect(line).toMatchObject({ serial: dev.serial, kind: 'device', clientId: 'rt-1' })
    expect(typeof line.remote).toBe('string')
  })

  test('an empty client id with a clean session is given the certificate id', async () => {
    const dev = await device('empty-clean-1')
    const c = keep(await connectOk(b.url, { ...tlsFor(caPem, dev), clientId: '', clean: true }))
    await b.logs.waitFor((l) => l.event === 'connect.accepted' && l.id === 'empty-clean-1' && l.clientId === 'empty-clean-1')
    const got = nextMessage(c, 'devices/empty-clean-1/x')
    await c.subscribeAsync('devices/empty-clean-1/x')
    await c.publishAsync('devices/empty-clean-1/x', 'ok')
    expect(await got).not.toBeNull()
  })

  test('mosquitto_sub and mosquitto_pub interoperate with a device certificate', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'aedes-zt-mosq-'))
    try {
      const dev = await device('mosq-1')
      await writeFile(path.join(dir, 'd.pem'), dev.certPem)
      await writeFile(path.join(dir, 'd.key'), dev.keyPem, { mode: 0o600 })
      const common = ['--cafile', path.join(ca.home, 'ca.pem'), '--cert', path.join(dir, 'd.pem'), '--key', path.join(dir, 'd.key'), '-h', 'localhost', '-p', String(b.port)]
      const sub = run('mosquitto_sub', [...common, '-i', 'mosq-1:sub', '-t', 'devices/mosq-1/telemetry', '-C', '1', '-W', '10'])
        .catch((err: unknown) => err as { stdout: string, stderr: string })
      // mosquitto_sub uses the id mosq-1:sub, which needs clientIdSuffix; the broker here has it off, so it must fail...
      const refused = await sub
      expect((refused as { stdout: string }).stdout ?? '').toBe('')
      await refusedLine('client-id-mismatch')
      // A backend in group ingest reads telemetry (shipped policies); the device publishes its own.
      const backend = await device('mosq-ingest', ['ingest'], 'service')
      await writeFile(path.join(dir, 'b.pem'), backend.certPem)
      await writeFile(path.join(dir, 'b.key'), backend.keyPem, { mode: 0o600 })
      const sub2 = run('mosquitto_sub', ['--cafile', path.join(ca.home, 'ca.pem'), '--cert', path.join(dir, 'b.pem'), '--key', path.join(dir, 'b.key'), '-h', 'localhost', '-p', String(b.port), '-i', 'mosq-ingest', '-t', 'devices/mosq-1/telemetry', '-C', '1', '-W', '10'])
      await b.logs.waitFor((l) => l.event === 'connect.accepted' && l.id === 'mosq-ingest')
      await new Promise((r) => setTimeout(r, 300))
      const pubDev = await device('mosq-pub')
      await writeFile(path.join(dir, 'p.pem'), pubDev.certPem)
      await writeFile(path.join(dir, 'p.key'), pubDev.keyPem, { mode: 0o600 })
      // Another device may not write into mosq-1's topics: its publish is dropped (and mosquitto_pub still succeeds)...
      await run('mosquitto_pub', ['--cafile', path.join(ca.home, 'ca.pem'), '--cert', path.join(dir, 'p.pem'), '--key', path.join(dir, 'p.key'), '-h', 'localhost', '-p', String(b.port), '-i', 'mosq-pub', '-t', 'devices/mosq-1/telemetry', '-m', 'spoofed', '-q', '1'])
      await b.logs.waitFor((l) => l.event === 'publish.denied' && l.id === 'mosq-pub')
      // ...while the owner's own publish arrives.
      await run('mosquitto_pub', [...common, '-i', 'mosq-1', '-t', 'devices/mosq-1/telemetry', '-m', '21.5', '-q', '1'])
      const { stdout } = await sub2
      expect(stdout.trim()).toBe('21.5')
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })
})

describe('refused at TLS', () => {
  test('no client certificate', async () => {
    const o = await tryConnect(b.url, { ...tlsFor(caPem), clientId: 'x' })
    expect(o.connected).toBe(false)
    expect(o.code).toBeUndefined()
    o.client.end(true)
    await refusedLine('tls-handshake')
  })

  test('a certificate from a foreign CA (even with our issuing CA\'s name)', async () => {
    const before = b.logs.lines.length
    const f = await forge(await foreignIssuer(issuer.cert.subject), { id: 'foreign-1' })
    const o = await tryConnect(b.url, { ...tlsFor(caPem, f), clientId: 'foreign-1' })
    expect(o.connected).toBe(false)
    expect(o.code).toBeUndefined()
    o.client.end(true)
    await b.logs.waitFor((l) => l.event === 'connect.refused' && l.reason === 'tls-handshake' && b.logs.lines.indexOf(l) >= before)
  })
})

describe('refused at CONNECT', () => {
  test('a revoked certificate: CONNACK 5', async () => {
    const dev = await device('revoked-1')
    await ca.authority.revoke({ serial: dev.serial }, 'keyCompromise')
    const deadline = Date.now() + 5000
    while (!b.broker.mirror.isRevoked(dev.serial) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    const o = await tryConnect(b.url, { ...tlsFor(caPem, dev), clientId: 'revoked-1' })
    expect(o.code).toBe(5)
    o.client.end(true)
    expect(await refusedLine('revoked', dev.serial)).toMatchObject({ id: 'revoked-1', code: 5 })
  })

  test('a serial our CA never recorded (requireIssuedSerial): CONNACK 5', async () => {
    const f = await forge(issuer, { id: 'minted-1' })
    const o = await tryConnect(b.url, { ...tlsFor(caPem, f), clientId: 'minted-1' })
    expect(o.code).toBe(5)
    o.client.end(true)
    expect(await refusedLine('unknown-serial', f.serial)).toMatchObject({ id: 'minted-1' })
  })

  const forged: Array<[string, Parameters<typeof forge>[1], string]> = [
    ['CN and SAN URI disagree', { id: 'victim-9', cns: ['attacker-9'] }, 'cn-uri-mismatch'],
    ['wrong trust domain', { id: 'td-1', trustDomain: 'other.example' }, 'wrong-trust-domain'],
    ['a CA:TRUE leaf', { id: 'catrue-1', ca: true }, 'ca-certificate'],
    ['no clientAuth EKU', { id: 'noeku-1', eku: ['1.3.6.1.5.5.7.3.1'] }, 'no-client-auth'],
  ]
  for (const [name, opts, reason] of forged) {
    test(`${name}: refused with an audit line`, async () => {
      const f = await forge(issuer, opts)
      const before = b.logs.lines.length
      const o = await tryConnect(b.url, { ...tlsFor(caPem, f), clientId: opts?.id ?? 'x' })
      expect(o.connected).toBe(false)
      o.client.end(true)
      // OpenSSL itself rejects some of these during the handshake (purpose checks); either way an audit line says so.
      const line = await b.logs.waitFor((l) => l.event === 'connect.refused' && b.logs.lines.indexOf(l) >= before)
      if (line.reason === 'tls-handshake') expect(o.code).toBeUndefined()
      else expect([o.code, line.reason]).toEqual([5, reason])
    })
  }

  test('an operator certificate: CONNACK 5 (operators are for the admin API)', async () => {
    const op = await device('op-1', undefined, 'operator')
    const o = await tryConnect(b.url, { ...tlsFor(caPem, op), clientId: 'op-1' })
    o.client.end(true)
    const line = await b.logs.waitFor((l) => l.event === 'connect.refused' && (l.serial === op.serial || l.reason === 'tls-handshake'))
    if (line.reason !== 'tls-handshake') expect([o.code, line.reason]).toEqual([5, 'kind-not-allowed'])
  })

  test('another device\'s client id: CONNACK 2, and the real device keeps its session and connection', async () => {
    const victim = await device('victim-1')
    const attacker = await device('attacker-1')
    const v = keep(await connectOk(b.url, { ...tlsFor(caPem, victim), clientId: 'victim-1' }))
    await v.subscribeAsync('devices/victim-1/#', { qos: 1 })
    const o = await tryConnect(b.url, { ...tlsFor(caPem, attacker), clientId: 'victim-1' })
    expect(o.code).toBe(2)
    o.client.end(true)
    expect(await refusedLine('client-id-mismatch', attacker.serial)).toMatchObject({ id: 'attacker-1', clientId: 'victim-1', code: 2 })
    await new Promise((r) => setTimeout(r, 100))
    expect(v.connected).toBe(true)
    const got = nextMessage(v, 'devices/victim-1/still-here')
    await v.publishAsync('devices/victim-1/still-here', 'yes', { qos: 1 })
    expect((await got)?.payload.toString()).toBe('yes')
  })

  test('an empty client id with a persistent session: CONNACK 2', async () => {
    const dev = await device('empty-persist-1')
    const raw = await rawTls(b.port, { ca: caPem, cert: dev.certPem, key: dev.keyPem })
    raw.socket.write(connectPacket({ clientId: '', clean: false }))
    const connack = await raw.waitFor(2)
    expect(connack === null ? undefined : connack[3]).toBe(2)
    raw.socket.destroy()
    await refusedLine('empty-client-id-persistent', dev.serial)
  })

  test('MQTT 5 is refused cleanly (CONNACK "unacceptable protocol version")', async () => {
    const dev = await device('v5-1')
    const o = await tryConnect(b.url, { ...tlsFor(caPem, dev), clientId: 'v5-1', protocolVersion: 5 })
    expect(o.connected).toBe(false)
    o.client.end(true)
    await refusedLine('mqtt-version')
    // On the wire: a 3.1.1-format CONNACK with code 1, then the close.
    const raw = await rawTls(b.port, { ca: caPem, cert: dev.certPem, key: dev.keyPem })
    raw.socket.write(connectPacket({ clientId: 'v5-1', protocolLevel: 5 }))
    const connack = await raw.waitFor(2)
    expect(connack === null ? undefined : connack[3]).toBe(1)
    raw.socket.destroy()
  })

  test('a Last Will the identity may not publish: CONNACK 5', async () => {
    const dev = await device('will-bad-1')
    const o = await tryConnect(b.url, { ...tlsFor(caPem, dev), clientId: 'will-bad-1', will: { topic: 'devices/someone-else/status', payload: Buffer.from('gone'), qos: 0, retain: false } })
    expect(o.code).toBe(5)
    o.client.end(true)
    expect(await refusedLine('will-forbidden', dev.serial)).toMatchObject({ id: 'will-bad-1' })
    // A will under its own topics is fine.
    const ok = keep(await connectOk(b.url, { ...tlsFor(caPem, dev), clientId: 'will-bad-1', will: { topic: 'devices/will-bad-1/status', payload: Buffer.from('gone'), qos: 0, retain: false } }))
    expect(ok.connected).toBe(true)
  })
})

describe('authorization on every path', () => {
  test('a forbidden publish is dropped and still acknowledged; a forbidden subscribe gets SUBACK 0x80; the connection stays', async () => {
    const dev = await device('authz-1')
    const spy = await device('authz-2')
    const c = keep(await connectOk(b.url, { ...tlsFor(caPem, dev), clientId: 'authz-1' }))
    const s = keep(await connectOk(b.url, { ...tlsFor(caPem, spy), clientId: 'authz-2' }))
    // mqtt.js turns a SUBACK with 0x80 into an error that carries the packet.
    const suback = await c.subscribeAsync(['devices/authz-2/#', '$SYS/#', '#', 'devices/authz-1/#'], { qos: 1 })
      .then(() => null, (err: { packet?: { granted: number[] } }) => err.packet?.granted)
    expect(suback).toEqual([128, 128, 128, 1])
    await b.logs.waitFor((l) => l.event === 'subscribe.denied' && l.id === 'authz-1' && l.filter === '$SYS/#')
    await s.subscribeAsync('devices/authz-2/#')
    const leak = nextMessage(s, 'devices/authz-2/cmd', 500)
    await c.publishAsync('devices/authz-2/cmd', 'spoof', { qos: 1 }) // resolves: PUBACK came back
    expect(await leak).toBeNull()
    await b.logs.waitFor((l) => l.event === 'publish.denied' && l.id === 'authz-1' && l.topic === 'devices/authz-2/cmd')
    await c.publishAsync('$SYS/evil', 'x', { qos: 0 })
    await b.logs.waitFor((l) => l.event === 'publish.denied' && l.id === 'authz-1' && l.topic === '$SYS/evil')
    expect(c.connected).toBe(true)
    const own = nextMessage(c, 'devices/authz-1/ok')
    await c.publishAsync('devices/authz-1/ok', 'fine', { qos: 1 })
    expect(await own).not.toBeNull()
    expect(b.logs.lines.some((l) => JSON.stringify(l).includes('spoof'))).toBe(false) // payloads are never logged
  })
})

describe('revocation of a live session', () => {
  test('the session is closed within a moment, its will is not published, and the enforcement is audited', async () => {
    const backend = await device('ingest-rv', ['ingest'], 'service')
    const watcher = keep(await connectOk(b.url, { ...tlsFor(caPem, backend), clientId: 'ingest-rv' }))
    await watcher.subscribeAsync('devices/+/telemetry', { qos: 1 })
    const will = { topic: '', payload: Buffer.from('offline'), qos: 1 as const, retain: false }
    // Control: an unclean end of a healthy device does publish its will, so the watcher could see one.
    const healthy = await device('healthy-rv')
    const h = await connectOk(b.url, { ...tlsFor(caPem, healthy), clientId: 'healthy-rv', will: { ...will, topic: 'devices/healthy-rv/telemetry' } })
    const hWill = nextMessage(watcher, 'devices/healthy-rv/telemetry', 3000)
    ;(h.stream as TLSSocket).destroy()
    expect((await hWill)?.payload.toString()).toBe('offline')
    h.end(true)

    const dev = await device('doomed-rv')
    const d = await connectOk(b.url, { ...tlsFor(caPem, dev), clientId: 'doomed-rv', will: { ...will, topic: 'devices/doomed-rv/telemetry' } })
    const closed = new Promise<number>((resolve) => { d.stream.once('close', () => { resolve(Date.now()) }) })
    const dWill = nextMessage(watcher, 'devices/doomed-rv/telemetry', 1500)
    const t0 = Date.now()
    await ca.authority.revoke({ serial: dev.serial }, 'keyCompromise')
    const tClosed = await closed
    expect(tClosed - t0).toBeLessThan(2000)
    d.end(true)
    expect(await dWill).toBeNull()
    const line = await b.logs.waitFor((l) => l.event === 'revocation.enforced' && l.serial === dev.serial)
    expect(line).toMatchObject({ id: 'doomed-rv', sessions: 1, reason: 'keyCompromise' })
    expect(typeof line.latencyMs).toBe('number')
  })

  test('a resumed TLS session is checked again at CONNECT: revoked in between → refused', async () => {
    const dev = await device('resume-1')
    const first = await rawTls(b.port, { ca: caPem, cert: dev.certPem, key: dev.keyPem })
    first.socket.write(connectPacket({ clientId: 'resume-1' }))
    expect((await first.waitFor(2))?.[3]).toBe(0)
    const deadline = Date.now() + 3000
    while (first.sessions.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    const session = first.sessions.at(-1)
    expect(session).toBeDefined()
    first.socket.destroy()
    await ca.authority.revoke({ serial: dev.serial })
    while (!b.broker.mirror.isRevoked(dev.serial)) await new Promise((r) => setTimeout(r, 20))
    const raw = await rawTls(b.port, { ca: caPem, cert: dev.certPem, key: dev.keyPem, ...(session === undefined ? {} : { session }) })
    expect(raw.socket.isSessionReused()).toBe(true)
    raw.socket.write(connectPacket({ clientId: 'resume-1' }))
    const connack = await raw.waitFor(2)
    expect(connack === null ? undefined : connack[3]).toBe(5)
    raw.socket.destroy()
    await refusedLine('revoked', dev.serial)
  })
})

describe('HTTP', () => {
  test('GET /healthz answers 200 with connections and revocation state; /crl is 404 until a CRL exists, then DER', async () => {
    const res = await fetch(`http://127.0.0.1:${b.broker.httpPort ?? 0}/healthz`)
    expect(res.status).toBe(200)
    const body = await res.json() as { status: string, connections: number, revocation: { current: boolean } }
    expect(body.status).toBe('ok')
    expect(body.revocation.current).toBe(true)
    expect(typeof body.connections).toBe('number')
    const before = await fetch(`http://127.0.0.1:${b.broker.httpPort ?? 0}/crl`)
    if (before.status === 404) {
      await ca.authority.crl()
    }
    const crl = await fetch(`http://127.0.0.1:${b.broker.httpPort ?? 0}/crl`)
    expect(crl.status).toBe(200)
    expect(crl.headers.get('content-type')).toBe('application/pkix-crl')
    const der = Buffer.from(await crl.arrayBuffer())
    expect(der[0]).toBe(0x30)
  })
})
