// Three `aedes-zt broker` processes on one private Redis: shared routing and sessions, revocation from the CLI enforced
// everywhere (a node cut off from Redis included), the staleness bound, keyCompromise, the CRL, and orphaned wills.
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import * as x509 from '@peculiar/x509'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { assertBuilt, cli, startNode, type BrokerNode } from './helpers/cluster.js'
import { connectOk, endClient, nextMessage, tlsFor, tryConnect, type Credentials } from './helpers/mqtt.js'
import { makeTestCa, TEST_PASSPHRASE, type TestCa } from './helpers/pki.js'
import { eventually, startRedisServer, TcpProxy, type RedisServerProcess } from './helpers/redis.js'

const POLICIES = `
policies:
  - name: devices
    principals: { kind: device }
    allow:
      publish: ["devices/\${id}/#"]
      subscribe: ["devices/\${id}/#"]
  - name: watchers
    principals: { kind: service, groups: [watch] }
    allow:
      subscribe: ["devices/#", "late/#"]
      publish: ["devices/+/commands/#"]
`
// Removed during the test: a will it allowed at CONNECT is no longer allowed when a survivor judges it.
const LATE_POLICY = `
policies:
  - name: late-wills
    principals: { kind: device, groups: [late] }
    allow:
      publish: ["late/\${id}"]
`

let dir: string
let redis: RedisServerProcess
let proxy: TcpProxy
let ca: TestCa
let caPem: string
let policiesDir: string
let n1: BrokerNode
let n2: BrokerNode
let n3: BrokerNode
let watcherCred: Credentials
const clients: MqttClient[] = []

async function device (id: string, groups: string[] = []): Promise<Credentials & { serial: string }> {
  const d = await ca.issueDevice(id, { groups })
  return { certPem: d.certPem, keyPem: d.keyPem, serial: d.serial }
}

async function connect (node: BrokerNode, cred: Credentials, clientId: string, extra: Record<string, unknown> = {}): Promise<MqttClient> {
  const c = await connectOk(node.url, { ...tlsFor(caPem, cred), clientId, ...extra })
  clients.push(c)
  return c
}

async function subscribe (c: MqttClient, filter: string, qos: 0 | 1 = 1): Promise<number> {
  const granted = await c.subscribeAsync(filter, { qos })
  return granted[0]?.qos ?? -1
}

function closed (c: MqttClient): Promise<void> {
  return new Promise((resolve) => { if (c.disconnected || !c.connected) resolve(); else c.once('close', () => { resolve() }) })
}

/** Every message on `filter`-matching topics the client receives from now on. */
function collect (c: MqttClient): Array<{ topic: string, payload: string }> {
  const got: Array<{ topic: string, payload: string }> = []
  c.on('message', (topic, payload) => { got.push({ topic, payload: payload.toString() }) })
  return got
}

async function revokeFromCli (serial: string, reason?: string): Promise<void> {
  const r = await cli(['--home', ca.home, '--redis', redis.url, 'cert', 'revoke', serial, ...(reason === undefined ? [] : ['--reason', reason])])
  expect(r.stderr).toBe('')
  expect(r.code).toBe(0)
}

const enforced = (serial: string) => (l: { event?: string, serial?: string | null }): boolean => l.event === 'revocation.enforced' && l.serial === serial

beforeAll(async () => {
  await assertBuilt()
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-cluster-'))
  redis = await startRedisServer(dir, { appendfsync: 'everysec' })
  proxy = await TcpProxy.start(redis.url)
  ca = await makeTestCa({ redisUrl: redis.url })
  caPem = await fs.readFile(path.join(ca.home, 'ca.pem'), 'utf8')
  policiesDir = path.join(dir, 'policies')
  await fs.mkdir(policiesDir)
  await fs.writeFile(path.join(policiesDir, 'cluster.yaml'), POLICIES)
  await fs.writeFile(path.join(policiesDir, 'late.yaml'), LATE_POLICY)
  const w = await ca.issueDevice('watcher', { kind: 'service', groups: ['watch'] })
  watcherCred = { certPem: w.certPem, keyPem: w.keyPem }
  // The first CRL is an operator's act; from then on the signing node keeps it current.
  await ca.authority.crl()
  const cluster = { heartbeatMs: 500 }
  const common = { home: ca.home, policies: policiesDir, dir }
  ;[n1, n2, n3] = await Promise.all([
    // Node 1 holds the CA key: it re-signs the CRL after revocations.
    startNode({ ...common, name: 'n1', redisUrl: redis.url, config: { cluster }, env: { AEDES_ZT_CA_PASSPHRASE: TEST_PASSPHRASE } }),
    // Node 2 reaches Redis through a proxy the test can cut, with a short staleness bound.
    startNode({ ...common, name: 'n2', redisUrl: proxy.url, config: { cluster, revocation: { maxStalenessMs: 1_500 } } }),
    startNode({ ...common, name: 'n3', redisUrl: redis.url, config: { cluster } }),
  ])
  for (const n of [n1, n2, n3]) await eventually(async () => await n.healthz() === 200, 20_000, `${n.name} admitting`)
}, 90_000)

afterAll(async () => {
  for (const c of clients) await endClient(c)
  await Promise.all([n1, n2, n3].map(async (n) => { await n?.kill('SIGKILL') }))
  await proxy?.close()
  await ca?.cleanup()
  await redis?.stop()
  if (dir !== undefined) await fs.rm(dir, { recursive: true, force: true })
}, 60_000)

describe('one broker across three nodes', () => {
  test('a message published on node 1 reaches a subscriber on node 3', async () => {
    const svc = await connect(n3, watcherCred, 'watcher')
    expect(await subscribe(svc, 'devices/+/telemetry')).toBe(1)
    const d = await device('route-1')
    const pub = await connect(n1, d, 'route-1')
    // The subscription reaches node 1 through Redis pub/sub; retry until the route exists rather than guess a delay.
    let got = null
    for (let i = 0; i < 20 && got === null; i++) {
      const next = nextMessage(svc, 'devices/route-1/telemetry', 500)
      await pub.publishAsync('devices/route-1/telemetry', '21.5', { qos: 1 })
      got = await next
    }
    expect(got?.payload.toString()).toBe('21.5')
    await endClient(pub)
    await endClient(svc)
  })

  test('a persistent session resumes on another node with the QoS 1 message queued while it was away', async () => {
    const d = await device('roamer')
    const first = await connect(n1, d, 'roamer', { clean: false })
    expect(await subscribe(first, 'devices/roamer/commands/#')).toBe(1)
    await endClient(first)
    const svc = await connect(n2, watcherCred, 'watcher')
    await svc.publishAsync('devices/roamer/commands/reboot', 'now', { qos: 1 })
    await endClient(svc)
    // Reconnects to a third node and subscribes to nothing: the session brings both the subscription and the message.
    const o = await tryConnect(n3.url, { ...tlsFor(caPem, d), clientId: 'roamer', clean: false }, 10_000)
    clients.push(o.client)
    expect(o.connected).toBe(true)
    const msg = await nextMessage(o.client, 'devices/roamer/commands/reboot', 10_000)
    expect(msg?.payload.toString()).toBe('now')
    expect(msg?.qos).toBe(1)
    await endClient(o.client)
  })

  test('revoked from the CLI: disconnected on node 1, refused on nodes 2 and 3, will not published, CRL re-signed', async () => {
    const d = await device('victim')
    const watcher = await connect(n2, watcherCred, 'watcher')
    expect(await subscribe(watcher, 'devices/+/will')).toBe(1)
    const got = collect(watcher)
    const victim = await connect(n1, d, 'victim', { will: { topic: 'devices/victim/will', payload: Buffer.from('gone'), qos: 1, retain: false } })
    const gone = closed(victim)
    await revokeFromCli(d.serial)
    await gone
    const line = await n1.waitFor(enforced(d.serial), 10_000, 'revocation.enforced')
    expect(line.sessions).toBe(1)
    for (const n of [n2, n3]) await n.waitFor(enforced(d.serial), 10_000, 'revocation.enforced')
    for (const n of [n2, n3]) {
      const o = await tryConnect(n.url, { ...tlsFor(caPem, d), clientId: 'victim' })
      o.client.end(true)
      expect(o.connected).toBe(false)
      expect(o.code).toBe(5)
    }
    // Node 1 holds the key: the CRL every node serves now lists the serial.
    await eventually(async () => {
      const res = await fetch(`http://127.0.0.1:${n3.httpPort}/crl`)
      if (res.status !== 200) return false
      const crl = new x509.X509Crl(new Uint8Array(await res.arrayBuffer()))
      return crl.entries.some((e) => e.serialNumber.toLowerCase().replace(/^0+/, '') === d.serial)
    }, 15_000, 'a CRL listing the revoked serial')
    await n1.waitFor((l) => l.event === 'crl.signed', 10_000, 'crl.signed')
    await new Promise((resolve) => setTimeout(resolve, 1_500))
    expect(got.filter((m) => m.topic === 'devices/victim/will')).toEqual([])
    await endClient(watcher)
  })

  test('keyCompromise clears what that identity retained, and only that', async () => {
    const bad = await device('leaky')
    const good = await device('honest')
    const b = await connect(n1, bad, 'leaky')
    const g = await connect(n2, good, 'honest')
    await b.publishAsync('devices/leaky/state', 'forged', { qos: 1, retain: true })
    await g.publishAsync('devices/honest/state', 'fine', { qos: 1, retain: true })
    await endClient(g)
    const gone = closed(b)
    await revokeFromCli(bad.serial, 'keyCompromise')
    await gone
    await n1.waitFor((l) => l.event === 'retained.cleared' && l.serial === bad.serial, 15_000, 'retained.cleared')
    const fresh = await connect(n3, watcherCred, 'watcher')
    const got = collect(fresh)
    await subscribe(fresh, 'devices/+/state')
    await eventually(() => got.some((m) => m.topic === 'devices/honest/state'), 10_000, 'the other device\'s retained message')
    await new Promise((resolve) => setTimeout(resolve, 500))
    expect(got).toEqual([{ topic: 'devices/honest/state', payload: 'fine' }])
    await endClient(fresh)
  })

  test('a node cut off from Redis keeps its sessions, refuses new ones past the bound, and enforces what it missed', async () => {
    const d = await device('cutoff')
    const other = await device('latecomer')
    const c = await connect(n2, d, 'cutoff')
    let gone = false
    c.once('close', () => { gone = true })
    proxy.cut()
    await revokeFromCli(d.serial)
    // Node 3 enforces at once; node 2 cannot know yet, and past its staleness bound it stops admitting.
    await n3.waitFor(enforced(d.serial), 10_000, 'revocation.enforced')
    await eventually(async () => await n2.healthz() === 503, 15_000, 'node 2 /healthz 503')
    const refused = await tryConnect(n2.url, { ...tlsFor(caPem, other), clientId: 'latecomer' })
    refused.client.end(true)
    expect(refused.code).toBe(3)
    expect(gone).toBe(false)
    proxy.restore()
    await n2.waitFor(enforced(d.serial), 20_000, 'revocation.enforced after reconnecting')
    await eventually(() => gone, 10_000, 'the revoked session closed')
    await eventually(async () => await n2.healthz() === 200, 20_000, 'node 2 /healthz 200')
    const admitted = await tryConnect(n2.url, { ...tlsFor(caPem, other), clientId: 'latecomer' })
    admitted.client.end(true)
    expect(admitted.connected).toBe(true)
    const again = await tryConnect(n2.url, { ...tlsFor(caPem, d), clientId: 'cutoff' })
    again.client.end(true)
    expect(again.code).toBe(5)
  })

  test('a killed node\'s wills: one survivor publishes the allowed one, once, never a revoked owner\'s or one the policy now forbids', async () => {
    const allowed = await device('will-ok')
    const revoked = await device('will-revoked')
    const late = await device('will-late', ['late'])
    const watcher = await connect(n1, watcherCred, 'watcher')
    const got = collect(watcher)
    expect(await subscribe(watcher, 'devices/+/will')).toBe(1)
    expect(await subscribe(watcher, 'late/#')).toBe(1)
    const will = (topic: string): Record<string, unknown> => ({ will: { topic, payload: Buffer.from('offline'), qos: 1, retain: false }, keepalive: 5 })
    await connect(n3, allowed, 'will-ok', will('devices/will-ok/will'))
    await connect(n3, revoked, 'will-revoked', will('devices/will-revoked/will'))
    await connect(n3, late, 'will-late', will('late/will-late'))
    await fs.rm(path.join(policiesDir, 'late.yaml'))
    for (const n of [n1, n2]) await n.waitFor((l) => l.event === 'policies.reloaded' && (l.generation as number) >= 2, 10_000, 'policies.reloaded')
    // Frozen, node 3 can neither publish these wills nor delete the revoked one's; then it dies without a word.
    n3.child.kill('SIGSTOP')
    await ca.authority.revoke({ serial: revoked.serial })
    await n3.kill('SIGKILL')
    await eventually(() => got.some((m) => m.topic === 'devices/will-ok/will'), 20_000, 'the allowed orphaned will')
    const denied = (serial: string, reason: (r: string) => boolean) => (l: { event?: string, serial?: string | null, reason?: string }) =>
      l.event === 'will.denied' && l.serial === serial && reason(l.reason ?? '')
    await eventually(() => [n1, n2].some((n) => n.logs.some(denied(revoked.serial, (r) => r === 'revoked'))), 10_000, 'will.denied revoked')
    await eventually(() => [n1, n2].some((n) => n.logs.some(denied(late.serial, (r) => r !== 'revoked'))), 10_000, 'will.denied by policy')
    expect(got.filter((m) => m.topic !== 'devices/will-ok/will')).toEqual([])
    // Both survivors find the wills (every 4 heartbeats, 2 s here); only the one that claims a will publishes it.
    // Three more sweeps of each survivor later, the will has still arrived once and been claimed once.
    await new Promise((resolve) => setTimeout(resolve, 6_000))
    expect(got.filter((m) => m.topic === 'devices/will-ok/will')).toHaveLength(1)
    const claims = [n1, n2].flatMap((n) => n.logs.filter((l) => l.event === 'will.claimed'))
    expect(claims.filter((l) => l.clientId === 'will-ok')).toHaveLength(1)
    expect(claims.filter((l) => l.clientId === 'will-revoked')).toHaveLength(1)
    expect(claims.find((l) => l.clientId === 'will-ok')?.serial).toBe(allowed.serial)
    await endClient(watcher)
  })
})
