// keyCompromise on one node (in-memory sessions): the revoked certificate's retained messages go, everyone else's stay,
// including a newer certificate of the same id (the tag is the serial, not the id); and on a node started after the
// revocation (Redis sessions), which finds it in the store rather than hearing it.
import { promises as fs, readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { createRequire } from 'node:module'
import { redisBackends } from '../broker/cluster.js'
import { RetainedCleaner, tagPublisher, type Compromised, type RetainedStore } from '../broker/retained.js'
import { resolveConfig } from '../broker/config.js'
import { startBroker, type RunningBroker } from '../broker/server.js'
import { connectOk, endClient, LogCapture, startTestBroker, tlsFor, type TestBroker } from './helpers/mqtt.js'
import { makeTestCa, type TestCa } from './helpers/pki.js'
import { eventually, startRedisServer, type RedisServerProcess } from './helpers/redis.js'

const memoryPersistence = createRequire(import.meta.url)('aedes-persistence') as () => RetainedStore & { setup (broker: unknown): Promise<void> }

let ca: TestCa
let b: TestBroker
let caPem: string

beforeAll(async () => {
  ca = await makeTestCa()
  caPem = readFileSync(path.join(ca.home, 'ca.pem'), 'utf8')
  b = await startTestBroker(ca.home)
})
afterAll(async () => {
  await b?.close()
  await ca?.cleanup()
})

async function retain (cred: { certPem: string, keyPem: string }, id: string, topic: string, payload: string): Promise<MqttClient> {
  const c = await connectOk(b.url, { ...tlsFor(caPem, cred), clientId: id })
  await c.publishAsync(topic, payload, { qos: 1, retain: true })
  return c
}

test('keyCompromise clears the retained messages of that certificate only', async () => {
  const old = await ca.issueDevice('kc-dev')
  const renewed = await ca.issueDevice('kc-dev')
  const other = await ca.issueDevice('kc-bystander')
  await endClient(await retain(old, 'kc-dev', 'devices/kc-dev/events/old', 'from the stolen key'))
  await endClient(await retain(renewed, 'kc-dev', 'devices/kc-dev/events/new', 'from the new key'))
  await endClient(await retain(other, 'kc-bystander', 'devices/kc-bystander/events/x', 'unrelated'))

  await ca.authority.revoke({ serial: old.serial }, 'keyCompromise')
  const line = await b.logs.waitFor((l) => l.event === 'retained.cleared' && l.serial === old.serial, 10_000)
  expect(line.messages).toBe(1)
  expect(JSON.stringify(b.logs.lines)).not.toContain('from the stolen key')

  const svc = await ca.issueDevice('kc-ingest', { kind: 'service', groups: ['ingest'] })
  const sub = await connectOk(b.url, { ...tlsFor(caPem, svc), clientId: 'kc-ingest' })
  const got: string[] = []
  sub.on('message', (topic) => { got.push(topic) })
  await sub.subscribeAsync('devices/+/events/#', { qos: 1 })
  await eventually(() => got.length >= 2, 10_000, 'the surviving retained messages')
  await new Promise((resolve) => setTimeout(resolve, 300))
  expect(got.sort()).toEqual(['devices/kc-bystander/events/x', 'devices/kc-dev/events/new'])
  await endClient(sub)
})

test('other revocation reasons leave retained messages alone', async () => {
  const d = await ca.issueDevice('kc-plain')
  await endClient(await retain(d, 'kc-plain', 'devices/kc-plain/events/last', 'still true'))
  await ca.authority.revoke({ serial: d.serial }, 'cessationOfOperation')
  await b.logs.waitFor((l) => l.event === 'revocation.enforced' && l.serial === d.serial, 10_000)
  const svc = await ca.issueDevice('kc-ingest-2', { kind: 'service', groups: ['ingest'] })
  const sub = await connectOk(b.url, { ...tlsFor(caPem, svc), clientId: 'kc-ingest-2' })
  const got: string[] = []
  sub.on('message', (topic) => { got.push(topic) })
  await sub.subscribeAsync('devices/kc-plain/events/#', { qos: 1 })
  await eventually(() => got.length >= 1, 10_000, 'the retained message')
  expect(got).toEqual(['devices/kc-plain/events/last'])
  expect(b.logs.find((l) => l.event === 'retained.cleared' && l.serial === d.serial)).toBeUndefined()
  await endClient(sub)
})

test('a retained message from a keyCompromise-revoked certificate that the clearing pass missed is withheld from subscribers', async () => {
  // Stored after the pass ran (another node that had not yet heard of the revocation, say): the pass cannot see it,
  // the delivery check does. A certificate revoked for another reason keeps its message.
  const stolen = await ca.issueDevice('kc-late')
  const retired = await ca.issueDevice('kc-retired')
  await ca.authority.revoke({ serial: stolen.serial }, 'keyCompromise')
  await ca.authority.revoke({ serial: retired.serial }, 'cessationOfOperation')
  await b.logs.waitFor((l) => l.event === 'retained.cleared' && l.serial === stolen.serial, 10_000)
  await b.logs.waitFor((l) => l.event === 'revocation.enforced' && l.serial === retired.serial, 10_000)
  const { persistence } = b.broker.aedes as unknown as { persistence: { storeRetained (packet: object): Promise<void> } }
  for (const [cred, id] of [[stolen, 'kc-late'], [retired, 'kc-retired']] as const) {
    const packet = { cmd: 'publish' as const, topic: `devices/${id}/events/late`, payload: Buffer.from(`late from ${id}`), qos: 1 as const, retain: true, dup: false, brokerId: b.broker.aedes.id, brokerCounter: 1 }
    tagPublisher(packet, cred.serial, id)
    await persistence.storeRetained(packet)
  }
  const svc = await ca.issueDevice('kc-ingest-3', { kind: 'service', groups: ['ingest'] })
  const sub = await connectOk(b.url, { ...tlsFor(caPem, svc), clientId: 'kc-ingest-3' })
  const got: string[] = []
  sub.on('message', (topic) => { got.push(topic) })
  await sub.subscribeAsync(['devices/kc-late/events/#', 'devices/kc-retired/events/#'], { qos: 1 })
  await eventually(() => got.length >= 1, 10_000, 'the retired device\'s retained message')
  await new Promise((resolve) => setTimeout(resolve, 300))
  expect(got).toEqual(['devices/kc-retired/events/late'])
  await endClient(sub)
})

// Revoked while no node runs: the node that starts next learns of it only from the store it loads, and must clear
// the retained messages then, in one pass, with the device offline. Retained messages outlive a node only in a shared
// persistence (Redis), so both certificate stores run with one: Redis for everything, and the file store beside it.
describe.each(['redis', 'file'] as const)('keyCompromise revoked while no node runs (%s certificate store)', (storeKind) => {
  let dir: string
  let redis: RedisServerProcess
  let home: TestCa
  let homeCaPem: string
  const running: RunningBroker[] = []

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-kc-offline-'))
    redis = await startRedisServer(dir, { appendfsync: 'everysec' })
    home = await makeTestCa(storeKind === 'redis' ? { redisUrl: redis.url } : {})
    homeCaPem = readFileSync(path.join(home.home, 'ca.pem'), 'utf8')
  }, 30_000)
  afterAll(async () => {
    for (const r of running) await r.close()
    await home?.cleanup()
    await redis?.stop()
    if (dir !== undefined) await fs.rm(dir, { recursive: true, force: true })
  })

  /** A node whose retained messages live in the private Redis, whatever holds the certificates. */
  async function node (): Promise<{ broker: RunningBroker, logs: LogCapture, url: string }> {
    const logs = new LogCapture()
    const config = resolveConfig({
      env: {},
      overrides: { home: home.home, port: 0, httpPort: null, host: '127.0.0.1', logLevel: 'info', ...(storeKind === 'redis' ? { redisUrl: redis.url } : {}) },
    })
    const broker = await startBroker(config, { logStream: logs, ...(storeKind === 'file' ? { backends: async () => redisBackends({ url: redis.url }) } : {}) })
    running.push(broker)
    await eventually(() => broker.admitting(), 20_000, 'the node admitting')
    return { broker, logs, url: `mqtts://127.0.0.1:${broker.port}` }
  }

  test('the next node to start clears the compromised serial\'s retained messages; another reason\'s stay', async () => {
    const leaked = await home.issueDevice('off-leaked')
    const retired = await home.issueDevice('off-retired')
    const first = await node()
    for (const [cred, id, payload] of [[leaked, 'off-leaked', 'forged'], [retired, 'off-retired', 'last words']] as const) {
      const c = await connectOk(first.url, { ...tlsFor(homeCaPem, cred), clientId: id })
      await c.publishAsync(`devices/${id}/events/state`, payload, { qos: 1, retain: true })
      await endClient(c)
    }
    await first.broker.close()

    // No node runs: nothing hears these revocations as they happen.
    await home.authority.revoke({ serial: leaked.serial }, 'keyCompromise')
    await home.authority.revoke({ serial: retired.serial }, 'cessationOfOperation')

    const next = await node()
    const swept = await next.logs.waitFor((l) => l.event === 'retained.swept', 20_000)
    expect(swept).toMatchObject({ messages: 1, serials: 1 })
    expect(next.logs.lines.filter((l) => l.event === 'retained.cleared').map((l) => [l.serial, l.messages, l.trigger])).toEqual([[leaked.serial, 1, 'sweep']])

    const svc = await home.issueDevice('off-ingest', { kind: 'service', groups: ['ingest'] })
    const sub = await connectOk(next.url, { ...tlsFor(homeCaPem, svc), clientId: 'off-ingest' })
    const got: string[] = []
    sub.on('message', (topic, payload) => { got.push(`${topic}=${payload.toString()}`) })
    await sub.subscribeAsync('devices/+/events/#', { qos: 1 })
    await eventually(() => got.length >= 1, 10_000, 'the surviving retained message')
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(got).toEqual(['devices/off-retired/events/state=last words'])
    await endClient(sub)

    // Clearing again finds nothing and changes nothing: a third node sweeps the same store.
    await next.broker.close()
    const third = await node()
    expect(await third.logs.waitFor((l) => l.event === 'retained.swept', 20_000)).toMatchObject({ messages: 0, serials: 0 })

    // Retained after that pass (a node that had not heard of the revocation): withheld on SUBSCRIBE, through the
    // node's view of the mirror with shared sessions (server.ts' gated view).
    const { persistence } = third.broker.aedes as unknown as { persistence: { storeRetained (packet: object): Promise<void> } }
    const late = { cmd: 'publish' as const, topic: 'devices/off-leaked/events/late', payload: Buffer.from('late forgery'), qos: 1 as const, retain: true, dup: false }
    tagPublisher(late, leaked.serial, 'off-leaked')
    await persistence.storeRetained(late)
    const svc2 = await home.issueDevice('off-ingest-2', { kind: 'service', groups: ['ingest'] })
    const sub2 = await connectOk(third.url, { ...tlsFor(homeCaPem, svc2), clientId: 'off-ingest-2' })
    const got2: string[] = []
    sub2.on('message', (topic) => { got2.push(topic) })
    await sub2.subscribeAsync('devices/+/events/#', { qos: 1 })
    await eventually(() => got2.length >= 1, 10_000, 'the surviving retained message')
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(got2).toEqual(['devices/off-retired/events/state'])
    await endClient(sub2)
  })
})

describe('RetainedCleaner', () => {
  test('revocations arriving during a pass share the next one; a failed pass keeps its work and is retried', async () => {
    const mem = memoryPersistence()
    await mem.setup({ id: 'unit' })
    const retain = async (topic: string, serial: string): Promise<void> => {
      const packet = { cmd: 'publish' as const, topic, payload: Buffer.from('x'), qos: 0 as const, retain: true as const, dup: false as const }
      tagPublisher(packet, serial, null)
      await mem.storeRetained(packet)
    }
    const serials = ['a1', 'a2', 'a3', 'a4']
    for (const s of serials) await retain(`devices/${s}/state`, s)
    await retain('devices/keep/state', 'b1')
    let scans = 0
    let available = false
    const persistence: RetainedStore = {
      createRetainedStream: (pattern) => { if (pattern === '#') scans++; return mem.createRetainedStream(pattern) },
      storeRetained: (packet) => mem.storeRetained(packet),
    }
    const cleared: Array<[string, number]> = []
    const failures: string[][] = []
    const cleaner = new RetainedCleaner({
      persistence: () => available ? persistence : undefined,
      compromised: () => null,
      onCleared: (rev, n) => { cleared.push([rev.serial, n]) },
      onSwept: () => {},
      onFailed: (_err, s) => { failures.push([...s]) },
      retryMs: 50,
    })
    const rev = (serial: string): Compromised => ({ serial, id: serial, reason: 'keyCompromise' })
    cleaner.clear(rev('a1'))
    await eventually(() => failures.length === 1, 5_000, 'the first pass to fail')
    expect(failures[0]).toEqual(['a1'])
    // Arriving while the retry waits: all four go in the retried pass.
    for (const s of serials.slice(1)) cleaner.clear(rev(s))
    available = true
    await eventually(() => cleared.length === 4, 5_000, 'the retried pass')
    cleaner.close()
    expect(cleared.sort()).toEqual(serials.map((s) => [s, 1]))
    expect(scans).toBe(1)
    const left: string[] = []
    for await (const p of mem.createRetainedStream('#')) left.push((p as { topic: string }).topic)
    expect(left).toEqual(['devices/keep/state'])
  })
})
