// Unit tests for the broker's plain decision functions: client id binding, CONNECT admission, topic hygiene,
// the default authorizer, and config validation.
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { ownTopicsAuthorizer, denyAllAuthorizer } from '../broker/authorizer.js'
import { resolveConfig } from '../broker/config.js'
import { bindClientId, decideConnect, type ConnectInput } from '../broker/decide.js'
import { IdentityReader, trustAnchor } from '../broker/identity.js'
import { censorSecrets, createLogger, REDACTED_KEYS } from '../broker/server.js'
import { certificateFromSession, peerCertificateDer } from '../broker/tls.js'
import { checkTopicFilter, checkTopicName } from '../broker/topics.js'
import { isZtError } from '../common/errors.js'
import { readFileSync } from 'node:fs'
import tls from 'node:tls'
import * as x509 from '@peculiar/x509'
import { makeTestCa, type IssuedDevice, type TestCa } from './helpers/pki.js'

describe('bindClientId', () => {
  test('the certificate id binds; another id, a prefix or a suffix does not', () => {
    expect(bindClientId('sensor-1', true, 'sensor-1', false)).toEqual({ ok: true, clientId: 'sensor-1' })
    for (const raw of ['sensor-2', 'sensor-1:a', 'sensor-10', 'sensor', 'SENSOR-1']) {
      expect(bindClientId(raw, true, 'sensor-1', false)).toMatchObject({ ok: false, code: 2, reason: 'client-id-mismatch' })
    }
  })
  test('with clientIdSuffix, <id>:<suffix> binds when the suffix is in the id alphabet', () => {
    expect(bindClientId('sensor-1:ui', false, 'sensor-1', true)).toEqual({ ok: true, clientId: 'sensor-1:ui' })
    for (const raw of ['sensor-1:', 'sensor-1:a/b', 'sensor-1:#', 'sensor-10:x', 'sensor-1:a:b']) {
      expect(bindClientId(raw, true, 'sensor-1', true)).toMatchObject({ ok: false, code: 2 })
    }
  })
  test('an empty id: clean session gets the certificate id, persistent is refused', () => {
    expect(bindClientId('', true, 'sensor-1', false)).toEqual({ ok: true, clientId: 'sensor-1' })
    expect(bindClientId('', false, 'sensor-1', false)).toMatchObject({ ok: false, code: 2, reason: 'empty-client-id-persistent' })
  })
})

describe('topic hygiene', () => {
  const limits = { maxTopicBytes: 16, maxTopicLevels: 3 }
  test('names', () => {
    expect(checkTopicName('a/b/c', limits)).toBeNull()
    expect(checkTopicName('', limits)).toBe('empty-topic')
    expect(checkTopicName('a/b/c/d', limits)).toBe('too-many-levels')
    expect(checkTopicName('é'.repeat(9), limits)).toBe('topic-too-long') // 18 bytes, 9 characters
    expect(checkTopicName('a\u0000', limits)).toBe('nul-in-topic')
    expect(checkTopicName('a/+', limits)).toBe('wildcard-in-topic')
    expect(checkTopicName('a/#', limits)).toBe('wildcard-in-topic')
  })
  test('filters', () => {
    for (const f of ['a/+/c', 'a/#', '#', '+', '+/+/+']) expect(checkTopicFilter(f, limits)).toBeNull()
    expect(checkTopicFilter('a/#/c', limits)).toBe('bad-wildcard')
    expect(checkTopicFilter('a/b#', limits)).toBe('bad-wildcard')
    expect(checkTopicFilter('a+/b', limits)).toBe('bad-wildcard')
    expect(checkTopicFilter('a/b/c/#', limits)).toBe('too-many-levels')
  })
})

describe('default authorizer', () => {
  const a = ownTopicsAuthorizer({ id: 'dev-1', kind: 'device', groups: [] })
  test('own subtree only, for every action', () => {
    expect(a.publish('devices/dev-1/telemetry', { qos: 1, retain: false }).effect).toBe('allow')
    expect(a.publish('devices/dev-1', { qos: 0, retain: false }).effect).toBe('allow')
    expect(a.publish('devices/dev-10/x', { qos: 0, retain: false }).effect).toBe('deny')
    expect(a.publish('devices/dev-2/x', { qos: 0, retain: false }).effect).toBe('deny')
    expect(a.publish('$SYS/x', { qos: 0, retain: false }).effect).toBe('deny')
    expect(a.subscribe('devices/dev-1/#', { qos: 2 })).toMatchObject({ effect: 'allow', grantedQos: 2 })
    expect(a.subscribe('devices/+/telemetry', { qos: 0 }).effect).toBe('deny')
    expect(a.subscribe('#', { qos: 0 }).effect).toBe('deny')
    expect(a.subscribe('$SYS/#', { qos: 0 }).effect).toBe('deny')
    expect(a.receive('devices/dev-1/commands/x', { qos: 1, retain: true }).effect).toBe('allow')
    expect(a.receive('devices/dev-2/commands/x', { qos: 1, retain: true }).effect).toBe('deny')
  })
  test('deny-all denies everything', () => {
    const d = denyAllAuthorizer({ id: 'dev-1', kind: 'device', groups: [] })
    expect(d.publish('devices/dev-1/x', { qos: 0, retain: false }).effect).toBe('deny')
  })
})

describe('decideConnect', () => {
  let ca: TestCa
  let dev: IssuedDevice
  let reader: IdentityReader
  let der: Uint8Array
  const revoked = new Set<string>()
  let current = true
  const revocation = { isRevoked: (s: string) => revoked.has(s), get: () => undefined, state: () => ({ current }), on: () => undefined, off: () => undefined }

  beforeAll(async () => {
    ca = await makeTestCa()
    dev = await ca.issueDevice('adm-1')
    reader = new IdentityReader(trustAnchor(readFileSync(path.join(ca.home, 'issuing.pem'), 'utf8'), 'aedes-zt.local'))
    der = new Uint8Array(new x509.X509Certificate(dev.certPem).rawData)
  })
  afterAll(async () => { await ca?.cleanup() })

  const input = (o: Partial<ConnectInput> = {}): ConnectInput => ({
    configured: true, tls: true, tlsAuthorized: true, certificate: der, reader, revocation, store: ca.authority.store, requireIssuedSerial: true, ...o,
  })

  test('admits an issued, unrevoked certificate', async () => {
    expect(await decideConnect(input())).toMatchObject({ ok: true, identity: { id: 'adm-1', serial: dev.serial } })
  })
  test('each missing precondition refuses with its code and reason', async () => {
    expect(await decideConnect(input({ configured: false }))).toMatchObject({ ok: false, code: 3, reason: 'not-configured' })
    expect(await decideConnect(input({ tls: false }))).toMatchObject({ ok: false, code: 5, reason: 'no-tls' })
    expect(await decideConnect(input({ tlsAuthorized: false }))).toMatchObject({ ok: false, code: 5, reason: 'tls-unauthorized' })
    expect(await decideConnect(input({ certificate: undefined }))).toMatchObject({ ok: false, code: 5, reason: 'no-certificate' })
    expect(await decideConnect(input({ revocation: undefined }))).toMatchObject({ ok: false, code: 3, reason: 'no-revocation-source' })
    expect(await decideConnect(input({ store: undefined }))).toMatchObject({ ok: false, code: 3, reason: 'no-store' })
    expect(await decideConnect(input({ store: { getIssued: async () => { throw new Error('down') } } }))).toMatchObject({ ok: false, code: 3, reason: 'store-unavailable' })
    expect(await decideConnect(input({ store: { getIssued: async () => null } }))).toMatchObject({ ok: false, code: 5, reason: 'unknown-serial' })
    expect(await decideConnect(input({ store: undefined, requireIssuedSerial: false }))).toMatchObject({ ok: true })
  })
  test('a stale mirror refuses with server unavailable; a revoked serial, also when revoked during the lookup', async () => {
    current = false
    expect(await decideConnect(input())).toMatchObject({ ok: false, code: 3, reason: 'revocation-not-current' })
    current = true
    revoked.add(dev.serial)
    expect(await decideConnect(input())).toMatchObject({ ok: false, code: 5, reason: 'revoked' })
    revoked.clear()
    const racing = { getIssued: async (s: string) => { revoked.add(s); return await ca.authority.store.getIssued(s) } }
    expect(await decideConnect(input({ store: racing }))).toMatchObject({ ok: false, code: 5, reason: 'revoked' })
    revoked.clear()
  })
  test('an inventory record for another id is refused', async () => {
    const other = { getIssued: async () => ({ serial: dev.serial, id: 'someone-else', kind: 'device' as const, groups: [], notBefore: '', notAfter: '' }) }
    expect(await decideConnect(input({ store: other }))).toMatchObject({ ok: false, code: 5, reason: 'inventory-mismatch' })
  })
})

describe('config', () => {
  let dir: string
  beforeAll(async () => { dir = await mkdtemp(path.join(os.tmpdir(), 'aedes-zt-cfg-')) })
  afterAll(async () => { await rm(dir, { recursive: true, force: true }) })

  const fails = (fn: () => unknown, re: RegExp): void => {
    try { fn() } catch (err) {
      expect(isZtError(err) && err.code === 'ZT_BAD_CONFIG').toBe(true)
      expect((err as Error).message).toMatch(re)
      expect((err as Error).message).not.toContain('\n')
      return
    }
    throw new Error('expected ZT_BAD_CONFIG')
  }

  test('defaults are documented values and frozen', () => {
    const c = resolveConfig()
    expect(c).toMatchObject({ port: 8883, httpPort: 8080, host: null, home: './certs-dev', redisUrl: null, policies: null, logLevel: 'info' })
    expect(c.identity).toEqual({ requireIssuedSerial: true, clientIdSuffix: false })
    expect(c.revocation).toEqual({ maxStalenessMs: 30000 })
    expect(c.limits).toEqual({ handshakeTimeoutMs: 10000, connectTimeoutMs: 10000, firstPacketBytes: 65536, maxPacketBytes: 262144, maxTopicBytes: 1024, maxTopicLevels: 32 })
    expect(Object.isFrozen(c) && Object.isFrozen(c.limits)).toBe(true)
  })
  test('YAML and JSON files; env over file; overrides over env', async () => {
    await writeFile(path.join(dir, 'a.yaml'), 'port: 1884\nlimits:\n  maxTopicLevels: 10\nlogLevel: warn\n')
    await writeFile(path.join(dir, 'b.json'), JSON.stringify({ identity: { clientIdSuffix: true } }))
    const a = resolveConfig({ file: path.join(dir, 'a.yaml'), env: { LOG_LEVEL: 'debug', REDIS_URL: 'redis://127.0.0.1:6379/2' }, overrides: { port: 0 } })
    expect(a).toMatchObject({ port: 0, logLevel: 'debug', redisUrl: 'redis://127.0.0.1:6379/2' })
    expect(a.limits.maxTopicLevels).toBe(10)
    expect(a.limits.maxTopicBytes).toBe(1024)
    expect(resolveConfig({ file: path.join(dir, 'b.json') }).identity.clientIdSuffix).toBe(true)
  })
  test('unknown keys and bad values stop start-up with one line naming them', async () => {
    await writeFile(path.join(dir, 'bad.yaml'), 'prot: 1\n')
    fails(() => resolveConfig({ file: path.join(dir, 'bad.yaml') }), /bad\.yaml: unknown key "prot"/)
    fails(() => resolveConfig({ overrides: { limits: { maxTopicLevel: 3 } } }), /unknown key "limits.maxTopicLevel"/)
    fails(() => resolveConfig({ overrides: { port: 70000 } }), /port 70000/)
    fails(() => resolveConfig({ overrides: { limits: { maxTopicLevels: 500 } } }), /maxTopicLevels 500/)
    fails(() => resolveConfig({ overrides: { identity: { requireIssuedSerial: 'no' } } }), /requireIssuedSerial "no"/)
    fails(() => resolveConfig({ env: { LOG_LEVEL: 'loud' } }), /environment: logLevel "loud"/)
    fails(() => resolveConfig({ env: { REDIS_URL: 'http://x' } }), /redisUrl/)
    fails(() => resolveConfig({ overrides: { limits: { firstPacketBytes: 100000, maxPacketBytes: 1000 } } }), /maxPacketBytes 1000/)
    fails(() => resolveConfig({ file: path.join(dir, 'missing.yaml') }), /cannot read/)
    await writeFile(path.join(dir, 'list.yaml'), '- 1\n')
    fails(() => resolveConfig({ file: path.join(dir, 'list.yaml') }), /top level/)
  })
})

describe('orphaned wills (authorizePublish with client null, as Aedes calls it for a dead node\'s wills)', () => {
  test('published only when the owner\'s certificate is known, unrevoked and allowed to', async () => {
    const { Aedes } = await import('aedes')
    const { zeroTrust } = await import('../broker/plugin.js')
    const { trustFromHome } = await import('../broker/tls.js')
    const { loadHome } = await import('../ca/index.js')
    const ca = await makeTestCa()
    try {
      const good = await ca.issueDevice('will-owner-1')
      const bad = await ca.issueDevice('will-owner-2')
      const revoked = new Set([bad.serial])
      const aedes = await Aedes.createBroker()
      zeroTrust(aedes, {
        ca: trustFromHome(await loadHome(ca.home)),
        store: ca.authority.store,
        revocation: { isRevoked: (s) => revoked.has(s), get: () => undefined, state: () => ({ current: true }), on: () => undefined, off: () => undefined },
      })
      const seen: string[] = []
      await new Promise<void>((resolve) => { aedes.subscribe('devices/#', (p: { topic: string }, cb: () => void) => { seen.push(p.topic); cb() }, resolve) })
      const will = (clientId: string, topic: string, serial?: string): Record<string, unknown> =>
        ({ cmd: 'publish', topic, payload: Buffer.from('bye'), qos: 0, retain: false, clientId, brokerId: 'dead-node', ...(serial === undefined ? {} : { ztSerial: serial }) })
      const attempt = async (w: Record<string, unknown>): Promise<void> => {
        await new Promise<void>((resolve, reject) => {
          aedes.authorizePublish(null as never, w as never, (err) => {
            if (err != null) { reject(err); return }
            aedes.publish(w as never, () => { resolve() })
          })
        })
      }
      await attempt(will('will-owner-1', 'devices/will-owner-1/status', good.serial))
      await attempt(will('will-owner-1', 'devices/someone-else/status', good.serial)) // not allowed by policy
      await attempt(will('will-owner-2', 'devices/will-owner-2/status', bad.serial)) // revoked
      await attempt(will('will-owner-1', 'devices/will-owner-1/unknown', 'abcdef0123')) // not in the inventory
      await attempt(will('will-owner-1', 'devices/will-owner-1/anon')) // no serial recorded
      await attempt(will('impostor-1', 'devices/will-owner-1/impostor', good.serial)) // owner id does not match the serial
      await new Promise((r) => setTimeout(r, 100))
      expect(seen).toEqual(['devices/will-owner-1/status'])
      await new Promise<void>((resolve) => { aedes.close(() => { resolve() }) })
    } finally {
      await ca.cleanup()
    }
  })
})

describe('log censoring', () => {
  test('secret keys are censored at the top level and one level down, without touching the caller\'s objects', () => {
    const fields = { id: 'a', passphrase: 'p', nested: { redisUrl: 'redis://u:pw@h', ok: 1 }, list: [{ key: 'k' }] }
    const out = censorSecrets(fields)
    expect(out).toEqual({ id: 'a', passphrase: '[redacted]', nested: { redisUrl: '[redacted]', ok: 1 }, list: [{ key: 'k' }] })
    expect(fields.passphrase).toBe('p')
    expect(fields.nested.redisUrl).toBe('redis://u:pw@h')
    const clean = { event: 'connect.accepted', id: 'a', groups: ['g'] }
    expect(censorSecrets(clean)).toBe(clean)
    for (const k of REDACTED_KEYS) expect(censorSecrets({ [k]: 'x' })).toEqual({ [k]: '[redacted]' })
  })
  test('the broker logger prints no secret', async () => {
    // A key made here, at test time: nothing secret-looking is committed.
    const { generateKeyPairSync } = await import('node:crypto')
    const keyPem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
    const keyBody = keyPem.split('\n')[1] as string
    const lines: string[] = []
    const log = createLogger('info', { write: (s: string) => { lines.push(s) } })
    log.info({ event: 'x', keyPem, cfg: { payload: 'secret-payload' } }, 'x')
    expect(lines.join('')).not.toContain(keyBody)
    expect(lines.join('')).not.toContain('secret-payload')
    expect(JSON.parse(lines[0] as string)).toMatchObject({ keyPem: '[redacted]', cfg: { payload: '[redacted]' } })
  })
})

describe('peer certificate from the TLS session', () => {
  let ca: TestCa
  let dev: IssuedDevice
  beforeAll(async () => {
    ca = await makeTestCa({ serverNames: ['localhost'] })
    dev = await ca.issueDevice('sess-1')
  })
  afterAll(async () => { await ca?.cleanup() })

  /** One connection; resolves with what the server read, and the client's session for a resumption. */
  async function connectOnce (server: tls.Server, opts: tls.ConnectionOptions): Promise<{ fromSession: Uint8Array | undefined, fromOpenSsl: Uint8Array | undefined, reused: boolean, session: Buffer | undefined }> {
    const seen = new Promise<{ fromSession: Uint8Array | undefined, fromOpenSsl: Uint8Array | undefined, reused: boolean }>((resolve) => {
      server.once('secureConnection', (s: tls.TLSSocket) => {
        s.once('data', () => {
          resolve({ fromSession: peerCertificateDer(s), fromOpenSsl: s.getPeerX509Certificate()?.raw, reused: s.isSessionReused() })
          s.end('ok')
        })
      })
    })
    const port = (server.address() as { port: number }).port
    let session: Buffer | undefined
    const c = tls.connect({ port, host: '127.0.0.1', servername: 'localhost', ca: readFileSync(path.join(ca.home, 'ca.pem'), 'utf8'), cert: dev.bundlePem, key: dev.keyPem, ...opts })
    c.on('session', (s: Buffer) => { session = s })
    c.on('secureConnect', () => { c.write('x') })
    c.on('data', () => {})
    const r = await seen
    await new Promise((resolve) => { c.on('close', resolve) })
    return { ...r, session }
  }

  for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
    test(`${version}: the session's peer certificate is OpenSSL's, fresh and resumed; the buffer is zeroed`, async () => {
      const read = (f: string): string => readFileSync(path.join(ca.home, f), 'utf8')
      const server = tls.createServer({ key: read('server.key'), cert: read('server.pem'), ca: [read('issuing.pem'), read('ca.pem')], requestCert: true, rejectUnauthorized: true, minVersion: version, maxVersion: version })
      await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
      try {
        const first = await connectOnce(server, {})
        expect(first.fromOpenSsl).toBeDefined()
        expect(Buffer.from(first.fromSession ?? [])).toEqual(Buffer.from(first.fromOpenSsl ?? []))
        expect(first.session).toBeDefined()
        const again = await connectOnce(server, { session: first.session })
        expect(again.reused).toBe(true)
        expect(Buffer.from(again.fromSession ?? [])).toEqual(Buffer.from(first.fromOpenSsl ?? []))
      } finally {
        server.close()
      }
      let zeroed: Buffer | undefined
      const fake = { getSession: () => (zeroed = Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01])), getPeerCertificate: () => undefined as unknown as tls.DetailedPeerCertificate }
      expect(peerCertificateDer(fake)).toBeUndefined()
      expect(zeroed?.every((b) => b === 0)).toBe(true)
    })
  }

  test('a session without a peer, or not DER, falls back to OpenSSL', () => {
    const fallback = { raw: Buffer.from('fallback') } as unknown as tls.DetailedPeerCertificate
    expect(certificateFromSession(Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]))).toBeUndefined()
    expect(peerCertificateDer({ getSession: () => Buffer.from([0x04, 0x00]), getPeerCertificate: () => fallback })).toEqual(Buffer.from('fallback'))
    expect(() => certificateFromSession(Buffer.from([0x30, 0x04, 0xa3, 0x02, 0x04, 0x00]))).toThrow()
  })
})
