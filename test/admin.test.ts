// Admin API: a real HTTPS client with operator certificates on port 0; every route, every refusal, an audit line per call.
import 'reflect-metadata'
import { execFile } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import https from 'node:https'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import * as x509 from '@peculiar/x509'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { resolveConfig, type ConfigInput } from '../broker/config.js'
import { startBroker } from '../broker/server.js'
import { ADMIN_ERROR_STATUS, httpStatusOf } from '../broker/admin.js'
import type { ErrorCode } from '../common/errors.js'
import { connectOk, endClient, LogCapture, tlsFor, tryConnect, type Credentials, type LogLine } from './helpers/mqtt.js'
import { makeTestCa, TEST_PASSPHRASE, type TestCa } from './helpers/pki.js'

const run = promisify(execFile)

interface Started { broker: Awaited<ReturnType<typeof startBroker>>, logs: LogCapture }

async function start (home: string, env: NodeJS.ProcessEnv, overrides: ConfigInput = {}): Promise<Started> {
  const logs = new LogCapture()
  const config = resolveConfig({ env: {}, overrides: { home, port: 0, httpPort: 0, adminPort: 0, host: '127.0.0.1', ...overrides } })
  const broker = await startBroker(config, { logStream: logs, env })
  return { broker, logs }
}

interface Answer { status: number, headers: Record<string, string | string[] | undefined>, body: Buffer, json: any } // eslint-disable-line @typescript-eslint/no-explicit-any

let ca: TestCa
let caPem: string
let main: Started
let noKeys: Started
let operator: Credentials & { serial: string }
let tmp: string
const clients: MqttClient[] = []
/** Calls answered with a status (not cut at TLS), per broker: each must have its audit line. */
const answered = new Map<Started, number>()

beforeAll(async () => {
  ca = await makeTestCa()
  caPem = readFileSync(path.join(ca.home, 'ca.pem'), 'utf8')
  tmp = await mkdtemp(path.join(os.tmpdir(), 'aedes-zt-admin-'))
  operator = await ca.issueDevice('ops-1', { kind: 'operator' })
  main = await start(ca.home, { AEDES_ZT_CA_PASSPHRASE: TEST_PASSPHRASE })
  // The same CA, but this broker was not given the passphrase: no issuing, no CRL signing; the rest works.
  noKeys = await start(ca.home, {})
})
afterAll(async () => {
  await Promise.all(clients.map(endClient))
  await main?.broker.close()
  await noKeys?.broker.close()
  await ca?.cleanup()
  if (tmp !== undefined) await rm(tmp, { recursive: true, force: true })
})

/** One HTTPS request, a fresh TLS connection each time (no agent), trusting only our root as `curl --cacert` does. */
async function call (b: Started, method: string, urlPath: string, opts: { cred?: Credentials | undefined, body?: unknown, raw?: string, headers?: Record<string, string> } = {}): Promise<Answer> {
  const payload = opts.raw ?? (opts.body === undefined ? undefined : JSON.stringify(opts.body))
  const answer = await new Promise<Answer>((resolve, reject) => {
    const req = https.request({
      host: '127.0.0.1',
      port: b.broker.adminPort ?? 0,
      servername: 'localhost',
      method,
      path: urlPath,
      ca: caPem,
      ...(opts.cred === undefined ? {} : { cert: opts.cred.certPem, key: opts.cred.keyPem }),
      agent: false,
      headers: { ...(payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) }), ...opts.headers },
    }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const body = Buffer.concat(chunks)
        const type = String(res.headers['content-type'] ?? '')
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: type.startsWith('application/json') ? JSON.parse(body.toString('utf8')) : undefined })
      })
    })
    req.on('error', reject)
    req.end(payload)
  })
  answered.set(b, (answered.get(b) ?? 0) + 1)
  return answer
}

async function csrFor (id: string): Promise<{ csr: string, keyPem: string }> {
  const key = path.join(tmp, `${id}.key`)
  const csr = path.join(tmp, `${id}.csr`)
  await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-subj', `/CN=${id}`, '-out', csr])
  return { csr: await readFile(csr, 'utf8'), keyPem: await readFile(key, 'utf8') }
}

function adminLine (b: Started, pred: (l: LogLine) => boolean): Promise<LogLine> {
  return b.logs.waitFor((l) => l.event === 'admin.call' && pred(l))
}

describe('authentication', () => {
  test('an operator certificate is accepted and the call is audited with its id and serial', async () => {
    const r = await call(main, 'GET', '/v1/whoami', { cred: operator })
    expect(r.status).toBe(200)
    expect(r.json).toMatchObject({ id: 'ops-1', kind: 'operator', serial: operator.serial })
    expect(await adminLine(main, (l) => l.route === 'GET /v1/whoami')).toMatchObject({ id: 'ops-1', serial: operator.serial, status: 200, level: 30 })
  })

  test.each(['device', 'service'] as const)('a %s certificate from our CA is refused with 403 ZT_FORBIDDEN', async (kind) => {
    const cred = await ca.issueDevice(`not-op-${kind}`, { kind, groups: kind === 'service' ? ['ingest'] : [] })
    const r = await call(main, 'GET', '/v1/certificates', { cred })
    expect(r.status).toBe(403)
    expect(r.json.error).toMatchObject({ code: 'ZT_FORBIDDEN', reason: 'kind-not-allowed' })
    expect(r.json.error.message).toContain(`kind ${kind}`)
    // Refused before routing: the log names who knocked, not what they asked for.
    expect(await adminLine(main, (l) => l.id === `not-op-${kind}`)).toMatchObject({ serial: cred.serial, status: 403, code: 'ZT_FORBIDDEN', reason: 'kind-not-allowed', route: 'unmatched' })
  })

  test('a request without a client certificate fails at TLS and is logged', async () => {
    const before = main.logs.lines.length
    await expect(call(main, 'GET', '/v1/whoami')).rejects.toThrow()
    answered.set(main, (answered.get(main) ?? 0)) // not answered: no admin.call expected
    await main.logs.waitFor((l) => l.event === 'admin.refused' && l.reason === 'tls-handshake' && main.logs.lines.indexOf(l) >= before)
  })

  test('an operator certificate that is not in the inventory is refused (requireIssuedSerial)', async () => {
    // Signed by our issuing CA but never recorded: what a stolen issuing key would mint.
    const bundle = await ca.authority.sign({ id: 'ops-ghost', kind: 'operator', generateKey: true })
    const r = await call(main, 'GET', '/v1/whoami', { cred: { certPem: bundle.certPem, keyPem: bundle.keyPem ?? '' } })
    expect(r.status).toBe(403)
    expect(r.json.error.reason).toBe('unknown-serial')
  })

  test('a revoked operator is refused at its next request', async () => {
    const op2 = await ca.issueDevice('ops-2', { kind: 'operator' })
    expect((await call(main, 'GET', '/v1/whoami', { cred: op2 })).status).toBe(200)
    const r = await call(main, 'POST', '/v1/revocations', { cred: operator, body: { id: 'ops-2', reason: 'privilegeWithdrawn' } })
    expect(r.status).toBe(200)
    await main.logs.waitFor((l) => l.event === 'revocation.enforced' && l.serial === op2.serial)
    const after = await call(main, 'GET', '/v1/whoami', { cred: op2 })
    expect(after.status).toBe(403)
    expect(after.json.error).toMatchObject({ code: 'ZT_FORBIDDEN', reason: 'revoked' })
  })

  test('an operator certificate is still refused over MQTT', async () => {
    const o = await tryConnect(`mqtts://127.0.0.1:${main.broker.port}`, { ...tlsFor(caPem, operator), clientId: 'ops-1' })
    o.client.end(true)
    expect(o.code).toBe(5)
  })
})

describe('certificates', () => {
  let issuedSerial = ''
  let device: MqttClient | undefined

  test('POST /v1/certificates issues from a CSR; the certificate connects over MQTT', async () => {
    const { csr, keyPem } = await csrFor('api-dev-1')
    const r = await call(main, 'POST', '/v1/certificates', { cred: operator, body: { id: 'api-dev-1', kind: 'device', groups: ['sensors'], days: 7, csr } })
    expect(r.status).toBe(201)
    expect(r.json).toMatchObject({ id: 'api-dev-1', kind: 'device', groups: ['sensors'] })
    issuedSerial = r.json.serial
    const leaf = new X509Certificate(r.json.certificate)
    expect(leaf.subject).toContain('CN=api-dev-1')
    expect(leaf.subjectAltName).toContain('spiffe://aedes-zt.local/device/api-dev-1')
    expect(leaf.serialNumber.toLowerCase().replace(/^0+/, '')).toBe(issuedSerial)
    expect(Date.parse(leaf.validTo) - Date.now()).toBeLessThan(8 * 86_400_000)
    // The PEM bundle carries the issuing CA, as `cert issue` prints it.
    expect((r.json.certificate as string).match(/BEGIN CERTIFICATE/g)).toHaveLength(2)
    device = await connectOk(`mqtts://127.0.0.1:${main.broker.port}`, { ...tlsFor(caPem, { certPem: r.json.certificate, keyPem }), clientId: 'api-dev-1' })
    clients.push(device)
    expect(await adminLine(main, (l) => l.route === 'POST /v1/certificates' && l.status === 201)).toMatchObject({ id: 'ops-1', targetId: 'api-dev-1', targetSerial: issuedSerial })
  })

  test('issuing validates its input', async () => {
    const bad = await call(main, 'POST', '/v1/certificates', { cred: operator, body: { id: 'a/b', csr: 'x' } })
    expect([bad.status, bad.json.error.code]).toEqual([400, 'ZT_BAD_ID'])
    const noCsr = await call(main, 'POST', '/v1/certificates', { cred: operator, body: { id: 'x1' } })
    expect([noCsr.status, noCsr.json.error.code]).toEqual([400, 'ZT_BAD_ARGUMENT'])
    const garbage = await call(main, 'POST', '/v1/certificates', { cred: operator, body: { id: 'x1', csr: '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n' } })
    expect([garbage.status, garbage.json.error.code]).toEqual([400, 'ZT_BAD_CSR'])
    const typo = await call(main, 'POST', '/v1/certificates', { cred: operator, body: { id: 'x1', csr: 'x', group: ['a'] } })
    expect([typo.status, typo.json.error.code]).toEqual([400, 'ZT_BAD_ARGUMENT'])
    expect(typo.json.error.message).toContain('"group"')
    const kind = await call(main, 'POST', '/v1/certificates', { cred: operator, body: { id: 'x1', kind: 'admin', csr: 'x' } })
    expect([kind.status, kind.json.error.code]).toEqual([400, 'ZT_BAD_KIND'])
  })

  test('GET /v1/certificates lists with id and status filters', async () => {
    const r = await call(main, 'GET', '/v1/certificates?id=api-dev-1', { cred: operator })
    expect(r.status).toBe(200)
    expect(r.json.certificates).toEqual([expect.objectContaining({ serial: issuedSerial, id: 'api-dev-1', status: 'active' })])
    const active = await call(main, 'GET', '/v1/certificates?status=active', { cred: operator })
    expect((active.json.certificates as Array<{ status: string }>).every((c) => c.status === 'active')).toBe(true)
    expect((active.json.certificates as Array<{ id: string }>).map((c) => c.id)).toContain('ops-1')
    const bad = await call(main, 'GET', '/v1/certificates?status=gone', { cred: operator })
    expect([bad.status, bad.json.error.code]).toEqual([400, 'ZT_BAD_ARGUMENT'])
    const one = await call(main, 'GET', `/v1/certificates/${issuedSerial.toUpperCase()}`, { cred: operator })
    expect(one.json).toMatchObject({ serial: issuedSerial, status: 'active' })
    const malformed = await call(main, 'GET', '/v1/certificates/%E0%A4%A', { cred: operator })
    expect([malformed.status, malformed.json.error.code]).toEqual([400, 'ZT_BAD_ARGUMENT'])
    const none = await call(main, 'GET', '/v1/certificates/abcdef0123', { cred: operator })
    expect([none.status, none.json.error.code]).toEqual([404, 'ZT_UNKNOWN_SERIAL'])
  })

  test('POST /v1/certificates/{serial}/revoke revokes and the live session is cut off', async () => {
    const closed = new Promise<void>((resolve) => { device?.once('close', () => { resolve() }) })
    const r = await call(main, 'POST', `/v1/certificates/${issuedSerial}/revoke`, { cred: operator, body: { reason: 'keyCompromise' } })
    expect(r.status).toBe(200)
    expect(r.json.revoked).toEqual([expect.objectContaining({ serial: issuedSerial, id: 'api-dev-1', reason: 'keyCompromise', created: true })])
    await main.logs.waitFor((l) => l.event === 'revocation.enforced' && l.serial === issuedSerial && l.sessions === 1)
    await closed
    expect(await adminLine(main, (l) => l.route === 'POST /v1/certificates/{serial}/revoke')).toMatchObject({ id: 'ops-1', status: 200, targetSerial: issuedSerial, targetId: 'api-dev-1', revocationReason: 'keyCompromise' })
    const again = await call(main, 'POST', `/v1/certificates/${issuedSerial}/revoke`, { cred: operator, body: {} })
    expect(again.json.revoked[0]).toMatchObject({ created: false, reason: 'keyCompromise' })
    const listed = await call(main, 'GET', `/v1/certificates/${issuedSerial}`, { cred: operator })
    expect(listed.json).toMatchObject({ status: 'revoked', reason: 'keyCompromise' })
  })

  test('POST /v1/revocations revokes by id; unknown ids, serials and reasons are refused', async () => {
    const d = await ca.issueDevice('api-dev-2')
    const r = await call(main, 'POST', '/v1/revocations', { cred: operator, body: { id: 'api-dev-2' } })
    expect(r.json.revoked).toEqual([expect.objectContaining({ serial: d.serial, reason: 'unspecified' })])
    const unknownId = await call(main, 'POST', '/v1/revocations', { cred: operator, body: { id: 'nobody-here' } })
    expect([unknownId.status, unknownId.json.error.code]).toEqual([404, 'ZT_UNKNOWN_ID'])
    const unknownSerial = await call(main, 'POST', '/v1/certificates/0123456789abcdef/revoke', { cred: operator, body: {} })
    expect([unknownSerial.status, unknownSerial.json.error.code]).toEqual([404, 'ZT_UNKNOWN_SERIAL'])
    for (const reason of ['constructor', 'certificateHold', 'oops']) {
      const bad = await call(main, 'POST', '/v1/revocations', { cred: operator, body: { id: 'api-dev-2', reason } })
      expect([bad.status, bad.json.error.code]).toEqual([400, 'ZT_BAD_REASON'])
    }
    const both = await call(main, 'POST', '/v1/revocations', { cred: operator, body: { id: 'x', serial: 'ab' } })
    expect([both.status, both.json.error.code]).toEqual([400, 'ZT_BAD_ARGUMENT'])
  })
})

describe('CRL', () => {
  test('GET before any CRL is 404; POST signs one (DER); GET serves it as DER or PEM', async () => {
    const before = await call(main, 'GET', '/v1/crl', { cred: operator })
    expect([before.status, before.json.error.code]).toEqual([404, 'ZT_NOT_FOUND'])
    const made = await call(main, 'POST', '/v1/crl', { cred: operator })
    expect(made.status).toBe(201)
    expect(made.headers['content-type']).toBe('application/pkix-crl')
    const crl = new x509.X509Crl(new Uint8Array(made.body))
    expect(crl.entries.length).toBeGreaterThan(0)
    const der = await call(main, 'GET', '/v1/crl', { cred: operator })
    expect(Buffer.compare(der.body, made.body)).toBe(0)
    const pem = await call(main, 'GET', '/v1/crl', { cred: operator, headers: { accept: 'application/x-pem-file' } })
    expect(pem.headers['content-type']).toBe('application/x-pem-file')
    const text = pem.body.toString('utf8')
    expect(text.startsWith('-----BEGIN X509 CRL-----\n')).toBe(true)
    // openssl reads it and its signature verifies under the issuing CA.
    const file = path.join(tmp, 'crl.pem')
    await writeFile(file, text)
    const { stderr } = await run('openssl', ['crl', '-in', file, '-noout', '-CAfile', path.join(ca.home, 'ca-chain.pem'), '-verify'])
    expect(stderr).toContain('verify OK')
  })

  test('a CRL in the store that is not ours (another CA, a flipped byte, an older one put back) is refused with 500', async () => {
    // Revocations made by earlier tests have the broker sign a new CRL after a debounce: settle it first, or it can
    // land between our write of a bad CRL and the read that should refuse it.
    await main.broker.crl.flush()
    const file = path.join(ca.home, 'store', 'crl.json')
    const original = await readFile(file, 'utf8')
    const stored = JSON.parse(original) as { number: string, der: string }
    const put = async (der: Uint8Array, number: string = stored.number): Promise<void> => {
      await writeFile(file, JSON.stringify({ number, der: Buffer.from(der).toString('base64') }) + '\n')
    }
    const refusedWith = async (reason: RegExp): Promise<void> => {
      const r = await call(main, 'GET', '/v1/crl', { cred: operator })
      expect([r.status, r.json.error.code]).toEqual([500, 'ZT_INTERNAL'])
      expect(r.json.error.reason).toMatch(reason)
      expect(r.json.error.message).toMatch(/^CRL: the stored CRL \(number \d+\) is refused: [^\n]+$/)
      await main.logs.waitFor((l) => l.event === 'crl.refused' && l.level === 50 && reason.test(String(l.reason)))
      await adminLine(main, (l) => l.route === 'GET /v1/crl' && l.status === 500 && reason.test(String(l.reason)))
    }
    try {
      const other = await makeTestCa()
      try {
        await put(await other.authority.crl())
      } finally {
        await other.cleanup()
      }
      await refusedWith(/^(foreign-issuer|bad-signature)$/)

      const flipped = Buffer.from(stored.der, 'base64')
      flipped[flipped.length - 1] = (flipped[flipped.length - 1] ?? 0) ^ 0x01
      await put(flipped)
      await refusedWith(/^bad-signature$/)

      // A newer CRL is handed out; putting the older (genuinely signed) one back is a rollback and is refused.
      await writeFile(file, original)
      const newer = await call(main, 'POST', '/v1/crl', { cred: operator })
      expect(newer.status).toBe(201)
      expect(Buffer.compare((await call(main, 'GET', '/v1/crl', { cred: operator })).body, newer.body)).toBe(0)
      await writeFile(file, original)
      await refusedWith(/^number-not-higher$/)
    } finally {
      await writeFile(file, original)
      await call(main, 'POST', '/v1/crl', { cred: operator })
    }
    expect((await call(main, 'GET', '/v1/crl', { cred: operator })).status).toBe(200)
  })
})

describe('explain', () => {
  test('answers with the live policies and names the deciding statement', async () => {
    const allow = await call(main, 'POST', '/v1/explain', { cred: operator, body: { id: 'sensor-9', publish: 'devices/sensor-9/telemetry' } })
    expect(allow.status).toBe(200)
    expect(allow.json).toMatchObject({ effect: 'allow', reason: 'allowed', statement: 'device-own-topics', identity: { id: 'sensor-9', kind: 'device' } })
    expect(allow.json.description).toContain('device-own-topics')
    const deny = await call(main, 'POST', '/v1/explain', { cred: operator, body: { id: 'sensor-9', publish: 'devices/sensor-8/telemetry' } })
    expect(deny.json).toMatchObject({ effect: 'deny', reason: 'no-match' })
    const bridge = await call(main, 'POST', '/v1/explain', { cred: operator, body: { id: 'edge-1', kind: 'service', groups: ['bridge'], subscribe: 'devices/+/events/#', qos: 1 } })
    expect(bridge.json).toMatchObject({ effect: 'allow', statement: 'bridge-example', grantedQos: 1 })
    const firmware = await call(main, 'POST', '/v1/explain', { cred: operator, body: { id: 'cmd-1', kind: 'service', groups: ['commands'], publish: 'devices/a/commands/firmware/x' } })
    expect(firmware.json).toMatchObject({ effect: 'deny', reason: 'denied', statement: 'send-commands' })
    const two = await call(main, 'POST', '/v1/explain', { cred: operator, body: { id: 'x', publish: 'a', subscribe: 'b' } })
    expect([two.status, two.json.error.code]).toEqual([400, 'ZT_BAD_ARGUMENT'])
    expect(await adminLine(main, (l) => l.route === 'POST /v1/explain' && l.targetId === 'edge-1')).toMatchObject({ id: 'ops-1', status: 200 })
  })
})

describe('protocol', () => {
  test('unknown route 404, wrong method 405, bad JSON 400, body over the limit 413', async () => {
    const nf = await call(main, 'GET', '/v1/nothing', { cred: operator })
    expect([nf.status, nf.json.error.code]).toEqual([404, 'ZT_NOT_FOUND'])
    const m = await call(main, 'DELETE', '/v1/certificates', { cred: operator })
    expect([m.status, m.json.error.code]).toEqual([405, 'ZT_BAD_METHOD'])
    const json = await call(main, 'POST', '/v1/explain', { cred: operator, raw: '{"id": ' })
    expect([json.status, json.json.error.code]).toEqual([400, 'ZT_BAD_ARGUMENT'])
    const arr = await call(main, 'POST', '/v1/explain', { cred: operator, raw: '[1]' })
    expect([arr.status, arr.json.error.code]).toEqual([400, 'ZT_BAD_ARGUMENT'])
    const big = await call(main, 'POST', '/v1/certificates', { cred: operator, body: { id: 'big', csr: 'x'.repeat(70_000) } })
    expect([big.status, big.json.error.code]).toEqual([413, 'ZT_TOO_LARGE'])
    expect(big.headers.connection).toBe('close')
  })

  test('without the CA passphrase, issuing and CRL signing answer 503; list, revoke and explain work', async () => {
    expect(noKeys.logs.find((l) => l.event === 'admin.ca.unavailable')?.reason).toContain('AEDES_ZT_CA_PASSPHRASE')
    const { csr } = await csrFor('api-dev-3')
    const issue = await call(noKeys, 'POST', '/v1/certificates', { cred: operator, body: { id: 'api-dev-3', csr } })
    expect([issue.status, issue.json.error.code]).toEqual([503, 'ZT_CA_UNAVAILABLE'])
    expect(issue.json.error.message).toContain('AEDES_ZT_CA_PASSPHRASE')
    const sign = await call(noKeys, 'POST', '/v1/crl', { cred: operator })
    expect([sign.status, sign.json.error.code]).toEqual([503, 'ZT_CA_UNAVAILABLE'])
    expect((await call(noKeys, 'GET', '/v1/certificates?id=ops-1', { cred: operator })).status).toBe(200)
    expect((await call(noKeys, 'POST', '/v1/explain', { cred: operator, body: { id: 'd', subscribe: 'devices/d/#' } })).json.effect).toBe('allow')
    const d = await ca.issueDevice('api-dev-4')
    const rev = await call(noKeys, 'POST', `/v1/certificates/${d.serial}/revoke`, { cred: operator, body: { reason: 'superseded' } })
    expect(rev.status).toBe(200)
    // Revoked through one broker's API, enforced by every broker following the store.
    await main.logs.waitFor((l) => l.event === 'revocation.enforced' && l.serial === d.serial)
  })

  test('every answered call has exactly one admin.call audit line, and no line carries a CSR or key', async () => {
    for (const b of [main, noKeys]) {
      const expected = answered.get(b) ?? 0
      const deadline = Date.now() + 5000
      const count = (): number => b.logs.lines.filter((l) => l.event === 'admin.call').length
      while (count() < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
      expect(count()).toBe(expected)
      const text = b.logs.lines.map((l) => JSON.stringify(l)).join('\n')
      expect(text).not.toContain('BEGIN CERTIFICATE REQUEST')
      expect(text).not.toContain('PRIVATE KEY')
    }
  })

  test('admin calls are counted in /metrics by route and status', async () => {
    const text = await (await fetch(`http://127.0.0.1:${main.broker.httpPort ?? 0}/metrics`)).text()
    expect(text).toMatch(/aedes_zt_admin_requests_total\{route="GET \/v1\/whoami",status="200"\} [1-9]/)
    expect(text).toMatch(/aedes_zt_admin_requests_total\{route="unmatched",status="403"\} [1-9]/)
  })
})

describe('configuration', () => {
  test('adminPort is off by default, validated, and settable', () => {
    expect(resolveConfig({ env: {} }).adminPort).toBeNull()
    expect(resolveConfig({ env: {}, overrides: { adminPort: 9443 } }).adminPort).toBe(9443)
    expect(() => resolveConfig({ env: {}, overrides: { adminPort: 'x' } })).toThrow(/adminPort "x" must be an integer port/)
  })

  test('every error code the admin API answers with is documented with its HTTP status', async () => {
    const doc = await readFile(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8')
    const missing = Object.keys(ADMIN_ERROR_STATUS).filter((code) => !doc.includes(`| \`${code}\` | ${httpStatusOf(code as ErrorCode)} |`))
    expect(missing).toEqual([])
  })
})
