// GET /metrics: scraped over real HTTP before and after real clients cause each event the metrics count.
import { readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { BrokerMetrics, ENFORCEMENT_BUCKETS } from '../broker/metrics.js'
import { connectOk, endClient, nextMessage, startTestBroker, tlsFor, tryConnect, type TestBroker } from './helpers/mqtt.js'
import { makeTestCa, type TestCa } from './helpers/pki.js'

// Devices own devices/<id>/..., except that devices/<id>/secret is never delivered to them (a receive denial).
const POLICY = `
policies:
  - name: own-topics
    principals: { kind: device }
    allow:
      publish: ["devices/\${id}/#"]
      subscribe: ["devices/\${id}/#"]
    deny:
      receive: ["devices/\${id}/secret"]
`

let ca: TestCa
let b: TestBroker
let caPem: string
let policyDir: string
const open: MqttClient[] = []

beforeAll(async () => {
  ca = await makeTestCa()
  caPem = readFileSync(path.join(ca.home, 'ca.pem'), 'utf8')
  policyDir = await mkdtemp(path.join(os.tmpdir(), 'aedes-zt-metrics-policies-'))
  await writeFile(path.join(policyDir, 'policies.yaml'), POLICY)
  b = await startTestBroker(ca.home, { policies: policyDir })
})
afterAll(async () => {
  await Promise.all(open.map(endClient))
  await b?.close()
  await ca?.cleanup()
  if (policyDir !== undefined) await rm(policyDir, { recursive: true, force: true })
})

type Samples = Map<string, number>

/** Scrapes with a real HTTP client and parses the text format into `name{labels}` → value. */
async function scrape (broker: TestBroker = b): Promise<Samples> {
  const res = await fetch(`http://127.0.0.1:${broker.broker.httpPort ?? 0}/metrics`)
  expect(res.status).toBe(200)
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/)
  const out: Samples = new Map()
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const at = line.lastIndexOf(' ')
    const raw = line.slice(at + 1)
    out.set(line.slice(0, at), raw === '+Inf' ? Infinity : raw === '-Inf' ? -Infinity : Number(raw))
  }
  return out
}

function value (s: Samples, key: string): number {
  const v = s.get(key)
  if (v === undefined) throw new Error(`metric ${key} is absent; have: ${[...s.keys()].filter((k) => k.startsWith('aedes_zt')).join(', ')}`)
  return v
}

async function device (id: string): Promise<{ certPem: string, keyPem: string, serial: string }> {
  return await ca.issueDevice(id)
}

describe('metrics', () => {
  test('the metric families exist from the start, with zeros for the label sets people alert on', async () => {
    const s = await scrape()
    expect(value(s, 'aedes_zt_connections{kind="device"}')).toBe(0)
    expect(value(s, 'aedes_zt_connections{kind="service"}')).toBe(0)
    for (const action of ['publish', 'subscribe', 'receive', 'will']) expect(value(s, `aedes_zt_authorization_denials_total{action="${action}"}`)).toBe(0)
    expect(value(s, 'aedes_zt_revocations_applied_total')).toBe(0)
    expect(value(s, 'aedes_zt_revocation_enforcement_seconds_count')).toBe(0)
    expect(value(s, 'aedes_zt_revocation_enforcement_seconds_bucket{le="0.001"}')).toBe(0)
    expect(value(s, 'aedes_zt_policy_reloads_total')).toBe(0)
    expect(value(s, 'aedes_zt_policy_reload_failures_total')).toBe(0)
    expect(value(s, 'aedes_zt_revocation_current')).toBe(1)
    const staleness = value(s, 'aedes_zt_revocation_staleness_seconds')
    expect(staleness).toBeGreaterThanOrEqual(0)
    expect(Number.isFinite(staleness)).toBe(true)
    // No CRL has been made yet.
    expect(value(s, 'aedes_zt_crl_age_seconds')).toBeNaN()
  })

  test('an accepted connection moves the connections gauge and counter; closing it moves the gauge back', async () => {
    const before = await scrape()
    const d = await device('m-conn-1')
    const c = await connectOk(b.url, { ...tlsFor(caPem, d), clientId: 'm-conn-1' })
    const svc = await ca.issueDevice('m-svc-1', { kind: 'service', groups: ['ingest'] })
    const s2 = await connectOk(b.url, { ...tlsFor(caPem, svc), clientId: 'm-svc-1' })
    const during = await scrape()
    expect(value(during, 'aedes_zt_connections{kind="device"}')).toBe(value(before, 'aedes_zt_connections{kind="device"}') + 1)
    expect(value(during, 'aedes_zt_connections{kind="service"}')).toBe(value(before, 'aedes_zt_connections{kind="service"}') + 1)
    expect(value(during, 'aedes_zt_connections_accepted_total{kind="device"}')).toBe(value(before, 'aedes_zt_connections_accepted_total{kind="device"}') + 1)
    await endClient(c)
    await endClient(s2)
    const deadline = Date.now() + 5000
    let after = await scrape()
    while (value(after, 'aedes_zt_connections{kind="device"}') !== value(before, 'aedes_zt_connections{kind="device"}') && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50))
      after = await scrape()
    }
    expect(value(after, 'aedes_zt_connections{kind="device"}')).toBe(value(before, 'aedes_zt_connections{kind="device"}'))
    expect(value(after, 'aedes_zt_connections{kind="service"}')).toBe(value(before, 'aedes_zt_connections{kind="service"}'))
  })

  test('refused connections are counted by reason', async () => {
    const d = await device('m-ref-1')
    const wrongId = await tryConnect(b.url, { ...tlsFor(caPem, d), clientId: 'someone-else' })
    wrongId.client.end(true)
    expect(wrongId.code).toBe(2)
    const noCert = await tryConnect(b.url, { ...tlsFor(caPem), clientId: 'x' })
    noCert.client.end(true)
    await b.logs.waitFor((l) => l.event === 'connect.refused' && l.reason === 'tls-handshake')
    const s = await scrape()
    expect(value(s, 'aedes_zt_connections_refused_total{reason="client-id-mismatch"}')).toBe(1)
    expect(value(s, 'aedes_zt_connections_refused_total{reason="tls-handshake"}')).toBeGreaterThanOrEqual(1)
  })

  test('denied publish, subscribe, receive and will are counted by action', async () => {
    const before = await scrape()
    const d = await device('m-deny-1')
    const c = await connectOk(b.url, { ...tlsFor(caPem, d), clientId: 'm-deny-1' })
    open.push(c)
    await c.publishAsync('devices/someone-else/telemetry', 'x', { qos: 1 })
    await b.logs.waitFor((l) => l.event === 'publish.denied' && l.id === 'm-deny-1')
    // SUBACK 0x80: mqtt.js turns it into a rejection.
    await expect(c.subscribeAsync('devices/+/telemetry')).rejects.toThrow()
    await b.logs.waitFor((l) => l.event === 'subscribe.denied' && l.id === 'm-deny-1')
    await c.subscribeAsync('devices/m-deny-1/#')
    // Two deliveries withheld on the same topic: the log says it once, the counter counts both.
    for (let i = 0; i < 2; i++) await c.publishAsync('devices/m-deny-1/secret', 'x', { qos: 1 })
    const shown = nextMessage(c, 'devices/m-deny-1/ok')
    await c.publishAsync('devices/m-deny-1/ok', 'y', { qos: 1 })
    expect(await shown).not.toBeNull()
    await b.logs.waitFor((l) => l.event === 'receive.denied' && l.id === 'm-deny-1')
    const w = await tryConnect(b.url, { ...tlsFor(caPem, await device('m-will-1')), clientId: 'm-will-1', will: { topic: 'devices/other/lwt', payload: Buffer.from('bye'), qos: 0, retain: false } })
    w.client.end(true)
    expect(w.code).toBe(5)
    const s = await scrape()
    const delta = (action: string): number => value(s, `aedes_zt_authorization_denials_total{action="${action}"}`) - value(before, `aedes_zt_authorization_denials_total{action="${action}"}`)
    expect(delta('publish')).toBe(1)
    expect(delta('subscribe')).toBe(1)
    expect(delta('receive')).toBe(2)
    expect(delta('will')).toBe(1)
    expect(value(s, 'aedes_zt_connections_refused_total{reason="will-forbidden"}')).toBe(1)
  })

  test('a revocation is counted, its enforcement latency observed, and the revoked-serials gauge grows', async () => {
    const before = await scrape()
    const d = await device('m-rev-1')
    const c = await connectOk(b.url, { ...tlsFor(caPem, d), clientId: 'm-rev-1' })
    const closed = new Promise<void>((resolve) => { c.once('close', () => { resolve() }) })
    await ca.authority.revoke({ serial: d.serial }, 'keyCompromise')
    await b.logs.waitFor((l) => l.event === 'revocation.enforced' && l.serial === d.serial)
    await closed
    c.end(true)
    const s = await scrape()
    expect(value(s, 'aedes_zt_revocations_applied_total')).toBe(value(before, 'aedes_zt_revocations_applied_total') + 1)
    expect(value(s, 'aedes_zt_revocation_sessions_closed_total')).toBe(value(before, 'aedes_zt_revocation_sessions_closed_total') + 1)
    expect(value(s, 'aedes_zt_revocation_enforcement_seconds_count')).toBe(value(before, 'aedes_zt_revocation_enforcement_seconds_count') + 1)
    expect(value(s, 'aedes_zt_revocation_enforcement_seconds_sum')).toBeGreaterThanOrEqual(value(before, 'aedes_zt_revocation_enforcement_seconds_sum'))
    expect(value(s, 'aedes_zt_revoked_serials')).toBe(value(before, 'aedes_zt_revoked_serials') + 1)
    expect(value(s, 'aedes_zt_revocation_enforcement_seconds_bucket{le="+Inf"}')).toBe(value(s, 'aedes_zt_revocation_enforcement_seconds_count'))
  })

  test('CRL age appears once a CRL is stored', async () => {
    await ca.authority.crl()
    const age = value(await scrape(), 'aedes_zt_crl_age_seconds')
    expect(age).toBeGreaterThanOrEqual(0)
    // thisUpdate is "now" when signed: the age is the time since, a few seconds at most on a busy machine.
    expect(age).toBeLessThan(120)
  })

  test('policy reloads and rejected changes are counted', async () => {
    const before = await scrape()
    await writeFile(path.join(policyDir, 'policies.yaml'), POLICY.replace('own-topics', 'own-topics-v2'))
    await b.logs.waitFor((l) => l.event === 'policies.reloaded')
    await writeFile(path.join(policyDir, 'policies.yaml'), 'policies:\n  - name: broken\n    allow: { publish: ["a/#/b"] }\n')
    await b.logs.waitFor((l) => l.event === 'policies.rejected')
    const s = await scrape()
    expect(value(s, 'aedes_zt_policy_reloads_total')).toBe(value(before, 'aedes_zt_policy_reloads_total') + 1)
    expect(value(s, 'aedes_zt_policy_reload_failures_total')).toBe(value(before, 'aedes_zt_policy_reload_failures_total') + 1)
  })

  test('each broker has its own registry: two brokers in one process do not share counters', async () => {
    const other = await startTestBroker(ca.home)
    try {
      const mine = await scrape()
      const theirs = await scrape(other)
      expect(value(mine, 'aedes_zt_connections_accepted_total{kind="device"}')).toBeGreaterThan(0)
      expect(value(theirs, 'aedes_zt_connections_accepted_total{kind="device"}')).toBe(0)
    } finally {
      await other.close()
    }
  })
})

describe('BrokerMetrics', () => {
  test('enforcement buckets span 1 ms to 500 ms', () => {
    expect(ENFORCEMENT_BUCKETS[0]).toBe(0.001)
    expect(ENFORCEMENT_BUCKETS).toContain(0.1)
    expect(ENFORCEMENT_BUCKETS).toContain(0.5)
  })

  test('label values outside our vocabulary are folded into "other"', async () => {
    const m = new BrokerMetrics()
    m.record('connect.refused', { reason: 'a reason with spaces and "quotes"' })
    m.record('revocation.enforced', { latencyMs: -5, sessions: 0 })
    const { body } = await m.scrape()
    expect(body).toContain('aedes_zt_connections_refused_total{reason="other"} 1')
    // A clock a little behind the revoking host's is a zero latency, not a negative one.
    expect(body).toContain('aedes_zt_revocation_enforcement_seconds_bucket{le="0.001"} 1')
  })
})
