// The CRL on a node: coalesced re-signing after revocations, refresh before nextUpdate, and serving only verified CRLs.
import { promises as fs } from 'node:fs'
import { execFile } from 'node:child_process'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import * as x509 from '@peculiar/x509'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { checkCrl, CrlService } from '../broker/crl.js'
import { RevocationMirror } from '../broker/revocation.js'
import { createLogger } from '../broker/server.js'
import { LogCapture, startTestBroker } from './helpers/mqtt.js'
import { makeTestCa, type TestCa } from './helpers/pki.js'
import { eventually } from './helpers/redis.js'

const run = promisify(execFile)

let ca: TestCa
let foreign: TestCa
let issuing: x509.X509Certificate
let issuingPem: string
const closers: Array<() => Promise<void>> = []

beforeAll(async () => {
  ca = await makeTestCa()
  foreign = await makeTestCa()
  issuingPem = ca.authority.home.issuingPem
  issuing = new x509.X509Certificate(issuingPem)
})
// Services of one test must not keep signing (or refreshing) into the next one's store.
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c()
})
afterAll(async () => {
  await foreign?.cleanup()
  await ca?.cleanup()
})

function serials (der: Uint8Array): string[] {
  return new x509.X509Crl(der).entries.map((e) => e.serialNumber.toLowerCase().replace(/^0+/, ''))
}

async function service (opts: Partial<ConstructorParameters<typeof CrlService>[0]> = {}): Promise<{ crl: CrlService, logs: LogCapture, mirror: RevocationMirror }> {
  const logs = new LogCapture()
  const mirror = new RevocationMirror(ca.authority.store, { blockMs: 100 })
  await mirror.start()
  const crl = new CrlService({ store: ca.authority.store, issuingPem, authority: ca.authority, revocation: mirror, logger: createLogger('info', logs), debounceMs: 100, ...opts })
  crl.start()
  closers.push(async () => { await crl.close(); await mirror.close() })
  return { crl, logs, mirror }
}

describe('checkCrl', () => {
  test('accepts what our issuing CA signed, with its number; refuses another CA\'s CRL and garbage', async () => {
    const ours = await ca.authority.crl()
    const c = await checkCrl(ours, issuing)
    expect(c.ok).toBe(true)
    expect(c.ok && c.number).toBe((await ca.authority.store.loadCrl())?.number)
    const theirs = await foreign.authority.crl()
    const f = await checkCrl(theirs, issuing)
    expect(f.ok).toBe(false)
    expect(f.ok ? '' : f.reason).toMatch(/^(bad-signature|foreign-issuer)$/)
    expect(await checkCrl(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01]), issuing)).toEqual({ ok: false, reason: 'malformed' })
  })
})

describe('re-signing on a node that holds the CA key', () => {
  test('a burst of revocations gets one new CRL that lists them all and openssl verifies', async () => {
    const { crl, logs } = await service()
    const first = await ca.authority.store.loadCrl()
    expect(first).not.toBeNull()
    const devices = await Promise.all([1, 2, 3, 4, 5].map(async (i) => await ca.issueDevice(`burst-${i}`)))
    await ca.authority.store.revoke(devices.map((d) => d.serial), 'superseded')
    await logs.waitFor((l) => l.event === 'crl.signed', 10_000)
    await crl.flush()
    const signed = logs.lines.filter((l) => l.event === 'crl.signed')
    expect(signed).toHaveLength(1)
    const stored = await ca.authority.store.loadCrl()
    expect(stored?.number).toBe((first?.number ?? 0n) + 1n)
    const listed = serials(stored?.der ?? new Uint8Array())
    for (const d of devices) expect(listed).toContain(d.serial)

    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-crl-'))
    closers.push(async () => { await fs.rm(dir, { recursive: true, force: true }) })
    const file = path.join(dir, 'crl.der')
    await fs.writeFile(file, stored?.der ?? new Uint8Array())
    const { stderr } = await run('openssl', ['crl', '-inform', 'DER', '-in', file, '-noout', '-CAfile', path.join(ca.home, 'ca-chain.pem'), '-verify'])
    expect(stderr).toMatch(/verify OK/)
  })

  test('a steady stream of revocations is still signed before it ends (maxWait)', async () => {
    const { logs } = await service({ debounceMs: 400, maxWaitMs: 300 })
    const devices = await Promise.all(Array.from({ length: 12 }, async (_, i) => await ca.issueDevice(`stream-${i}`)))
    let signedDuring = false
    for (const d of devices) {
      await ca.authority.store.revoke([d.serial], 'unspecified')
      if (logs.lines.some((l) => l.event === 'crl.signed')) signedDuring = true
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    expect(signedDuring).toBe(true)
  })

  test('re-signs before nextUpdate: past half the validity a fresh CRL with a higher number replaces it', async () => {
    const before = await ca.authority.store.loadCrl()
    const days = ca.authority.home.config.crlDays
    const { logs } = await service({ checkMs: 50, now: () => Date.now() + (days * 86_400_000) * 0.6 })
    await logs.waitFor((l) => l.event === 'crl.signed' && l.reason === 'refresh', 10_000)
    const after = await ca.authority.store.loadCrl()
    expect(after?.number ?? 0n).toBeGreaterThan(before?.number ?? 0n)
  })

  test('does not start publishing a CRL when none was ever made', async () => {
    const fresh = await makeTestCa()
    closers.push(async () => { await fresh.cleanup() })
    const logs = new LogCapture()
    const mirror = new RevocationMirror(fresh.authority.store, { blockMs: 100 })
    await mirror.start()
    const crl = new CrlService({ store: fresh.authority.store, issuingPem: fresh.authority.home.issuingPem, authority: fresh.authority, revocation: mirror, logger: createLogger('info', logs), debounceMs: 20 })
    crl.start()
    closers.push(async () => { await crl.close(); await mirror.close() })
    const d = await fresh.issueDevice('lonely')
    await fresh.authority.revoke({ serial: d.serial })
    await eventually(() => mirror.isRevoked(d.serial), 10_000, 'the mirror to see the revocation')
    await crl.flush()
    expect(await fresh.authority.store.loadCrl()).toBeNull()
    expect(await crl.current()).toBeNull()
  })
})

describe('serving', () => {
  test('a CRL our CA did not sign is refused and the last good one is served', async () => {
    const good = await ca.authority.crl()
    const logs = new LogCapture()
    const crl = new CrlService({ store: ca.authority.store, issuingPem, logger: createLogger('info', logs) })
    expect(Buffer.from(await crl.current() ?? [])).toEqual(Buffer.from(good))
    const theirs = await foreign.authority.crl()
    await ca.authority.store.saveCrl({ der: theirs, number: 1_000_000n })
    expect(Buffer.from(await crl.current() ?? [])).toEqual(Buffer.from(good))
    const refused = await logs.waitFor((l) => l.event === 'crl.refused')
    expect(refused.reason).toMatch(/^(bad-signature|foreign-issuer)$/)
  })

  test('a CRL numbered lower than one already served is refused', async () => {
    const older = await ca.authority.crl()
    const newer = await foreign.authority.crl().then(async () => await ca.authority.crl())
    let next: Uint8Array = newer
    const logs = new LogCapture()
    const crl = new CrlService({ store: { loadCrl: async () => ({ der: next, number: 0n }) }, issuingPem, logger: createLogger('info', logs) })
    expect(Buffer.from(await crl.current() ?? [])).toEqual(Buffer.from(newer))
    next = older
    expect(Buffer.from(await crl.current() ?? [])).toEqual(Buffer.from(newer))
    expect((await logs.waitFor((l) => l.event === 'crl.refused')).reason).toBe('number-not-higher')
  })

  test('verified() hands out only a checked CRL and, unlike current(), has no fallback', async () => {
    const good = await ca.authority.crl()
    let next: { der: Uint8Array, number: bigint } | null = null
    const logs = new LogCapture()
    const crl = new CrlService({ store: { loadCrl: async () => next }, issuingPem, logger: createLogger('info', logs) })
    expect(await crl.verified()).toBeNull()
    next = { der: good, number: 1n }
    expect(Buffer.from(await crl.verified() ?? [])).toEqual(Buffer.from(good))
    const theirs = await foreign.authority.crl()
    next = { der: theirs, number: 2n }
    await expect(crl.verified()).rejects.toMatchObject({ code: 'ZT_INTERNAL', context: { reason: expect.stringMatching(/^(bad-signature|foreign-issuer)$/) } })
    // current() still serves the last good one for GET /crl; verified() keeps refusing.
    expect(Buffer.from(await crl.current() ?? [])).toEqual(Buffer.from(good))
    next = { der: new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x01]), number: 3n }
    await expect(crl.verified()).rejects.toThrow(/^CRL: the stored CRL \(number 3\) is refused: it is not a readable CRL;/)
    expect(logs.lines.filter((l) => l.event === 'crl.refused' && l.level === 50).map((l) => l.reason)).toEqual([expect.stringMatching(/^(bad-signature|foreign-issuer)$/), 'malformed'])
  })

  test('GET /crl on a broker serves the verified CRL and keeps it when the store holds a forged one', async () => {
    const home = await makeTestCa()
    closers.push(async () => { await home.cleanup() })
    const b = await startTestBroker(home.home)
    closers.push(async () => { await b.close() })
    const url = `http://127.0.0.1:${b.broker.httpPort ?? 0}/crl`
    expect((await fetch(url)).status).toBe(404)
    const good = await home.authority.crl()
    const res = await fetch(url)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('application/pkix-crl')
    expect(Buffer.from(await res.arrayBuffer())).toEqual(Buffer.from(good))
    await home.authority.store.saveCrl({ der: await foreign.authority.crl(), number: 999_999n })
    expect(Buffer.from(await (await fetch(url)).arrayBuffer())).toEqual(Buffer.from(good))
    await b.logs.waitFor((l) => l.event === 'crl.refused')
  })
})
