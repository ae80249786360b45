// Hostile clients: oversized packets before and after CONNECT, NUL, invalid UTF-8, deep and long topics; the broker
// closes them and keeps serving good clients. Also: an Aedes instance with the plugin but no CA admits nobody.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import tls from 'node:tls'
import type { AddressInfo } from 'node:net'
import { Aedes } from 'aedes'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { loadHome } from '../ca/index.js'
import { zeroTrust } from '../broker/plugin.js'
import { tlsServerOptions, trustFromHome } from '../broker/tls.js'
import { DEFAULT_LIMITS } from '../broker/limits.js'
import {
  closesWithin, connectOk, connectPacket, endClient, LogCapture, nextMessage, packet, publishPacket, rawTls,
  startTestBroker, subscribePacket, tlsFor, tryConnect, type TestBroker,
} from './helpers/mqtt.js'
import { makeTestCa, type IssuedDevice, type TestCa } from './helpers/pki.js'

let ca: TestCa
let b: TestBroker
let caPem: string
let dev: IssuedDevice

beforeAll(async () => {
  ca = await makeTestCa()
  caPem = readFileSync(path.join(ca.home, 'ca.pem'), 'utf8')
  b = await startTestBroker(ca.home, { limits: { maxPacketBytes: 100_000, connectTimeoutMs: 500 } })
  dev = await ca.issueDevice('hostile-1')
})
afterAll(async () => { await b?.close(); await ca?.cleanup() })

async function connected (clientId = 'hostile-1'): Promise<Awaited<ReturnType<typeof rawTls>>> {
  const raw = await rawTls(b.port, { ca: caPem, cert: dev.certPem, key: dev.keyPem })
  raw.socket.write(connectPacket({ clientId }))
  expect((await raw.waitFor(2))?.[3]).toBe(0)
  raw.received.length = 0
  return raw
}

/** A good client still gets served: connect, subscribe, round-trip. */
async function stillServing (): Promise<void> {
  const good = await ca.issueDevice(`good-${Math.random().toString(36).slice(2, 8)}`)
  const id = new (await import('@peculiar/x509')).X509Certificate(good.certPem).subjectName.getField('CN')[0] as string
  const c = await connectOk(b.url, { ...tlsFor(caPem, good), clientId: id })
  await c.subscribeAsync(`devices/${id}/t`)
  const got = nextMessage(c, `devices/${id}/t`)
  await c.publishAsync(`devices/${id}/t`, 'alive')
  expect((await got)?.payload.toString()).toBe('alive')
  await endClient(c)
}

describe('limits before authentication', () => {
  test('a first packet declaring more than 64 KiB is closed before it is buffered', async () => {
    const raw = await rawTls(b.port, { ca: caPem, cert: dev.certPem, key: dev.keyPem })
    // CONNECT header declaring 10 MiB, then a trickle of bytes: the broker must not wait for the rest.
    raw.socket.write(Buffer.concat([Buffer.from([0x10, 0x80, 0x80, 0x80, 0x05]), Buffer.alloc(1024)]))
    expect(await closesWithin(raw)).toBe(true)
    await b.logs.waitFor((l) => l.event === 'protocol.violation' && l.reason === 'first-packet-too-large')
    await stillServing()
  })

  test('more than 64 KiB of small packets before authentication is closed too', async () => {
    const raw = await rawTls(b.port, { ca: caPem, cert: dev.certPem, key: dev.keyPem })
    const before = b.logs.lines.length
    // Not a CONNECT: pings, 2 bytes each, 70 000 bytes in all.
    raw.socket.write(Buffer.alloc(70_000, Buffer.from([0xc0, 0x00])))
    expect(await closesWithin(raw)).toBe(true)
    await b.logs.waitFor((l) => (l.event === 'protocol.violation' || l.event === 'connection.closed') && b.logs.lines.indexOf(l) >= before)
  })

  test('no CONNECT within connectTimeoutMs: closed', async () => {
    const raw = await rawTls(b.port, { ca: caPem, cert: dev.certPem, key: dev.keyPem })
    expect(await closesWithin(raw, 3000)).toBe(true)
  })

  test('a TLS handshake that never completes is dropped by handshakeTimeout', async () => {
    const small = await startTestBroker(ca.home, { limits: { handshakeTimeoutMs: 300 } })
    try {
      const net = await import('node:net')
      const s = net.connect(small.port, '127.0.0.1')
      s.on('error', () => {})
      const closed = await new Promise<boolean>((resolve) => {
        s.on('close', () => { resolve(true) })
        setTimeout(() => { resolve(false) }, 3000)
      })
      expect(closed).toBe(true)
      await small.logs.waitFor((l) => l.event === 'connect.refused' && l.reason === 'tls-handshake')
    } finally {
      await small.close()
    }
  })
})

describe('after CONNECT', () => {
  test('a packet above limits.maxPacketBytes closes the connection', async () => {
    const raw = await connected()
    raw.socket.write(publishPacket('devices/hostile-1/big', Buffer.alloc(150_000)))
    expect(await closesWithin(raw)).toBe(true)
    await b.logs.waitFor((l) => l.event === 'protocol.violation' && l.reason === 'packet-too-large' && l.id === 'hostile-1')
    await stillServing()
  })

  test('a packet under the limit is fine', async () => {
    const raw = await connected()
    raw.socket.write(publishPacket('devices/hostile-1/ok', Buffer.alloc(90_000), 1, 7))
    expect((await raw.waitFor(4))?.[0]).toBe(0x40) // PUBACK
    raw.socket.destroy()
  })

  const bad: Array<[string, Buffer, string]> = [
    ['U+0000 in a publish topic', publishPacket(Buffer.from('devices/hostile-1/a\u0000b'), 'x'), 'nul-in-string'],
    ['invalid UTF-8 in a publish topic', publishPacket(Buffer.from([...Buffer.from('devices/hostile-1/'), 0xc3, 0x28]), 'x'), 'invalid-utf8'],
    ['U+0000 in a subscribe filter', subscribePacket(Buffer.from('devices/hostile-1/\u0000')), 'nul-in-string'],
    ['invalid UTF-8 in a subscribe filter', subscribePacket(Buffer.from([0x64, 0xff, 0xfe])), 'invalid-utf8'],
    ['an overlong UTF-8 encoding of "/"', publishPacket(Buffer.from([0x61, 0xc0, 0xaf, 0x62]), 'x'), 'invalid-utf8'],
  ]
  for (const [name, bytes, reason] of bad) {
    test(`${name} closes the connection`, async () => {
      const raw = await connected()
      const before = b.logs.lines.length
      raw.socket.write(bytes)
      expect(await closesWithin(raw)).toBe(true)
      await b.logs.waitFor((l) => l.event === 'protocol.violation' && l.reason === reason && b.logs.lines.indexOf(l) >= before)
    })
  }

  test('too many levels, too long, or empty: publish and subscribe close the connection', async () => {
    const deep = 'devices/hostile-1/' + Array.from({ length: 40 }, () => 'x').join('/')
    const long = 'devices/hostile-1/' + 'y'.repeat(1100)
    for (const bytes of [publishPacket(deep, 'x'), subscribePacket(deep), publishPacket(long, 'x'), subscribePacket(long), publishPacket('', 'x')]) {
      const raw = await connected()
      raw.socket.write(bytes)
      expect(await closesWithin(raw)).toBe(true)
    }
    expect(b.logs.find((l) => l.reason === 'topic-too-long')).toBeDefined()
    await stillServing()
  })

  test('the connection that stayed within the rules keeps working while hostile ones are closed', async () => {
    await stillServing()
  })
})

describe('fail closed', () => {
  test('an Aedes instance with the plugin but no CA admits nobody, even over a valid mutual-TLS connection', async () => {
    const logs = new LogCapture()
    const aedes = await Aedes.createBroker()
    const zt = zeroTrust(aedes, { logger: pino({ level: 'info' }, logs) })
    expect(zt.tlsOptions).toBeUndefined()
    expect(() => zt.createServer()).toThrow(/no CA configured/)
    // Someone wires TLS by hand with a perfectly good CA: still nobody gets in.
    const home = await loadHome(ca.home)
    const server = tls.createServer(tlsServerOptions(trustFromHome(home), DEFAULT_LIMITS), (s) => { aedes.handle(s) })
    await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
    try {
      const port = (server.address() as AddressInfo).port
      const o = await tryConnect(`mqtts://127.0.0.1:${port}`, { ...tlsFor(caPem, dev), clientId: 'hostile-1' })
      expect(o.code).toBe(3)
      o.client.end(true)
      await logs.waitFor((l) => l.event === 'connect.refused' && l.reason === 'not-configured')
    } finally {
      await new Promise<void>((resolve) => { aedes.close(() => { resolve() }) })
      server.close()
    }
  })

  test('a CA but no revocation mirror: nobody is admitted (CONNACK 3)', async () => {
    const logs = new LogCapture()
    const aedes = await Aedes.createBroker()
    const home = await loadHome(ca.home)
    const zt = zeroTrust(aedes, { ca: trustFromHome(home), logger: pino({ level: 'info' }, logs) })
    const server = zt.createServer()
    await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
    try {
      const port = (server.address() as AddressInfo).port
      const o = await tryConnect(`mqtts://127.0.0.1:${port}`, { ...tlsFor(caPem, dev), clientId: 'hostile-1' })
      expect(o.code).toBe(3)
      o.client.end(true)
      await logs.waitFor((l) => l.event === 'connect.refused' && l.reason === 'no-revocation-source')
    } finally {
      await new Promise<void>((resolve) => { aedes.close(() => { resolve() }) })
      server.close()
    }
  })
})

test('packet() framing sanity', () => {
  expect(packet(0xc0, Buffer.alloc(0))).toEqual(Buffer.from([0xc0, 0x00]))
})
