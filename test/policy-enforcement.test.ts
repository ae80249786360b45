// Integration: topic policies enforced by a running broker on every path a message takes, and reloaded live.
//
// Each test starts its own broker (port 0, mutual TLS, test CA) on a temp policies directory it writes, and talks to
// it with real mqtt.js clients (one raw TLS socket where the bytes matter). "Not delivered" is never proven by
// waiting blindly: the forbidden message is sent first and an allowed one after it on the same path (a sentinel),
// or the broker's audit line for the refusal is awaited, and only then is the receiver's inbox checked.
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { mkdtemp, rename, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { TLSSocket } from 'node:tls'
import mqtt, { type IClientOptions, type IConnackPacket, type MqttClient } from 'mqtt'
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest'
import { redisBackends, type ClusterBackends } from '../broker/cluster.js'
import { resolveConfig } from '../broker/config.js'
import { startBroker } from '../broker/server.js'
import type { Kind } from '../common/ids.js'
import {
  closesWithin, connectPacket, endClient, LogCapture, publishPacket, rawTls, startTestBroker, subscribePacket, tlsFor, tryConnect,
  type LogLine, type TestBroker,
} from './helpers/mqtt.js'
import { makeTestCa, type IssuedDevice, type TestCa } from './helpers/pki.js'
import { deletePrefix, eventually, REDIS_URL, testPrefix } from './helpers/redis.js'

/** Generous: it bounds how long we wait for something that must happen, on a shared 2-core machine. */
const PATIENCE_MS = 10_000

let ca: TestCa
let caPem: string
const issued = new Map<string, Promise<IssuedDevice>>()

beforeAll(async () => {
  ca = await makeTestCa()
  caPem = readFileSync(path.join(ca.home, 'ca.pem'), 'utf8')
})
afterAll(async () => {
  await ca?.cleanup()
})

// ---- one broker per test, on its own policies directory ---------------------------------------------------------------

interface Env {
  b: TestBroker
  dir: string
  clients: MqttClient[]
}

let current: Env | undefined

function env (): Env {
  if (current === undefined) throw new Error('no broker: call start() first')
  return current
}

/** Where Aedes keeps sessions: in memory (the default without Redis), or aedes-persistence-redis (a cluster's). */
type Sessions = 'memory' | 'redis'
const SESSIONS: ReadonlyArray<{ sessions: Sessions }> = [{ sessions: 'memory' }, { sessions: 'redis' }]

/**
 * Pub/sub channels of mqemitter-redis are global on a Redis server, so tests on the shared one use ids and topics of
 * their own run: another broker's subscriptions must not see our messages, nor ours theirs.
 */
const RUN = randomUUID().slice(0, 8)

/** Starts a broker whose policies directory holds `policy.yaml` with this text. */
async function start (yaml: string, sessions: Sessions = 'memory'): Promise<Env> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'aedes-zt-policies-'))
  await writeFile(path.join(dir, 'policy.yaml'), yaml)
  const b = sessions === 'memory' ? await startTestBroker(ca.home, { policies: dir }) : await startWithRedisSessions(dir)
  current = { b, dir, clients: [] }
  return current
}

/** As startTestBroker, with Aedes' sessions in Redis under a key prefix of this test (the certificate store stays in files). */
async function startWithRedisSessions (dir: string): Promise<TestBroker> {
  const logs = new LogCapture()
  const prefix = testPrefix()
  const config = resolveConfig({ env: {}, overrides: { home: ca.home, port: 0, httpPort: 0, host: '127.0.0.1', logLevel: 'info', policies: dir } })
  let backends: ClusterBackends | undefined
  const broker = await startBroker(config, {
    logStream: logs,
    backends: async () => (backends = redisBackends({ url: REDIS_URL, keyPrefix: `${prefix}aedes:` })),
  })
  // The node admits no one until aedes-persistence-redis has loaded the stored sessions.
  await eventually(() => backends?.ready() === true, PATIENCE_MS, 'sessions loaded from Redis')
  return {
    broker,
    logs,
    port: broker.port,
    url: `mqtts://127.0.0.1:${broker.port}`,
    close: async () => { await broker.close(); await deletePrefix(prefix) },
  }
}

/** The session store of the running broker, asked the way Aedes asks it. */
interface SessionStore {
  subscriptionsByClient (client: { id: string }): Promise<Array<{ topic: string, qos: number }>>
  outgoingStream (client: { id: string }): AsyncIterable<{ payload: Uint8Array }>
}

function sessionStore (): SessionStore {
  return (env().b.broker.aedes as unknown as { persistence: SessionStore }).persistence
}

/** Stored subscriptions of a client id, as `filter@qos`, sorted. */
async function storedSubscriptions (clientId: string): Promise<string[]> {
  return (await sessionStore().subscriptionsByClient({ id: clientId })).map((s) => `${s.topic}@${s.qos}`).sort()
}

/** Payloads in a client id's outgoing queue (messages stored for it and not acknowledged). */
async function outgoingQueue (clientId: string): Promise<string[]> {
  const out: string[] = []
  for await (const p of sessionStore().outgoingStream({ id: clientId })) out.push(Buffer.from(p.payload).toString('utf8'))
  return out
}

afterEach(async () => {
  const e = current
  current = undefined
  if (e === undefined) return
  await Promise.all(e.clients.map(endClient))
  await e.b.close()
  await rm(e.dir, { recursive: true, force: true })
})

/** Writes a policy file atomically (write, then rename), so the watcher never reads half a file. */
async function putPolicy (text: string, file = 'policy.yaml'): Promise<void> {
  const tmp = path.join(env().dir, `.${file}.tmp`) // not *.yaml: the loader ignores it
  await writeFile(tmp, text)
  await rename(tmp, path.join(env().dir, file))
}

/** Replaces the policies and resolves once the broker applies them (its `policies.reloaded` line), with the generation. */
async function reload (text: string, file = 'policy.yaml'): Promise<number> {
  const { b } = env()
  const before = b.broker.policies.current().generation
  await putPolicy(text, file)
  const line = await b.logs.waitFor((l) => l.event === 'policies.reloaded' && (l.generation as number) > before, PATIENCE_MS)
  // onReload runs after the watcher already answers with the new set: the next decision uses it.
  expect(b.broker.policies.current().generation).toBe(line.generation)
  return line.generation as number
}

async function audit (event: string, pred: (l: LogLine) => boolean): Promise<LogLine> {
  return await env().b.logs.waitFor((l) => l.event === event && pred(l), PATIENCE_MS)
}

// ---- identities and clients ---------------------------------------------------------------------------------------------

interface Who {
  kind?: Kind
  groups?: string[]
}

/** One certificate per id for the whole file (issuing is the slow part), kind and groups fixed at first use. */
async function credentials (id: string, who: Who = {}): Promise<IssuedDevice> {
  let p = issued.get(id)
  if (p === undefined) {
    p = ca.issueDevice(id, { kind: who.kind ?? 'device', ...(who.groups === undefined ? {} : { groups: who.groups }) })
    issued.set(id, p)
  }
  return await p
}

interface Received {
  topic: string
  payload: string
  retain: boolean
  qos: number
}

/** Every message a client receives, in order; attached before CONNECT so queued deliveries are not missed. */
class Inbox {
  readonly messages: Received[] = []
  #waiters: Array<() => void> = []

  constructor (client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      this.messages.push({ topic, payload: payload.toString('utf8'), retain: packet.retain, qos: packet.qos })
      for (const w of this.#waiters.splice(0)) w()
    })
  }

  get payloads (): string[] {
    return this.messages.map((m) => m.payload)
  }

  /** Resolves with the first message (received already or to come) with this payload. */
  async waitFor (payload: string, timeoutMs = PATIENCE_MS): Promise<Received> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const hit = this.messages.find((m) => m.payload === payload)
      if (hit !== undefined) return hit
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`message ${JSON.stringify(payload)} not received within ${timeoutMs} ms; got ${JSON.stringify(this.payloads)}`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 250))
        this.#waiters.push(() => { clearTimeout(t); resolve() })
      })
    }
  }
}

interface Session {
  client: MqttClient
  inbox: Inbox
  sessionPresent: boolean
}

interface ConnectOptions extends Who {
  clean?: boolean
  will?: NonNullable<IClientOptions['will']>
}

/** A real mqtt.js client over mutual TLS with the id's certificate and client id; no automatic reconnect. */
async function connect (id: string, o: ConnectOptions = {}): Promise<Session> {
  const cred = await credentials(id, o)
  const client = mqtt.connect(env().b.url, {
    ...tlsFor(caPem, cred),
    clientId: id,
    clean: o.clean ?? true,
    protocolVersion: 4,
    reconnectPeriod: 0,
    connectTimeout: PATIENCE_MS,
    ...(o.will === undefined ? {} : { will: o.will }),
  })
  env().clients.push(client)
  const inbox = new Inbox(client)
  const connack = await new Promise<IConnackPacket>((resolve, reject) => {
    const fail = (err?: Error): void => { reject(new Error(`${id}: not connected (${err?.message ?? 'closed'})`)) }
    client.once('connect', (p) => { client.off('error', fail); client.off('close', fail); resolve(p) })
    client.once('error', fail)
    client.once('close', fail)
  })
  return { client, inbox, sessionPresent: connack.sessionPresent }
}

/** Subscribes in one SUBSCRIBE packet and returns the SUBACK return codes (0x80 = refused). */
async function subscribe (client: MqttClient, filters: string[], qos: 0 | 1 | 2 = 1): Promise<number[]> {
  return await new Promise((resolve, reject) => {
    client.subscribe(filters, { qos }, (err, _grants, suback) => {
      if (suback !== undefined) resolve(suback.granted as number[])
      else reject(err ?? new Error('no SUBACK'))
    })
  })
}

/** A graceful DISCONNECT (acks flushed, no will): the persistent session stays on the broker. */
async function disconnect (client: MqttClient): Promise<void> {
  await new Promise<void>((resolve) => { client.end(false, {}, () => { resolve() }) })
}

const REFUSED = 0x80

/**
 * Resolves once `observer` has received every payload. Aedes acknowledges a QoS 1 PUBLISH before it routes it (and
 * with Redis, routing comes back through pub/sub later still): a session that reconnects in between gets the message
 * both from its queue and live, as QoS 1 allows. An observer on the same node having it means routing is over.
 */
async function routed (observer: Session, payloads: string[]): Promise<void> {
  for (const p of payloads) await observer.inbox.waitFor(p)
}

// ---- policies ---------------------------------------------------------------------------------------------------------

describe('publish', () => {
  const POLICY = `
policies:
  - name: device-telemetry
    principals: { kind: device }
    allow:
      publish:
        - "devices/\${id}/telemetry"
        - { topic: "devices/\${id}/state", retain: false }
        - { topic: "devices/\${id}/events/#", maxQos: 0 }
  - name: ingest
    principals: { kind: service, groups: [ingest] }
    allow:
      subscribe: ["devices/#"]
`

  test('an allowed publish is delivered; another device\'s topic, a retain:false entry with retain set and QoS above maxQos are acked, dropped and audited, and the connection stays', async () => {
    const { b } = await start(POLICY)
    const ingest = await connect('pub-ingest', { kind: 'service', groups: ['ingest'] })
    expect(await subscribe(ingest.client, ['devices/#'])).toEqual([1])
    const dev = await connect('pub-a')

    // Each publishAsync below resolves only when its ack (PUBACK, or PUBREC/PUBCOMP for QoS 2) came back.
    await dev.client.publishAsync('devices/pub-a/telemetry', 't1', { qos: 1 })
    await dev.client.publishAsync('devices/pub-b/telemetry', 'spoof', { qos: 1 })
    await dev.client.publishAsync('devices/pub-a/state', 'retained-state', { qos: 1, retain: true })
    await dev.client.publishAsync('devices/pub-a/state', 's1', { qos: 1, retain: false })
    await dev.client.publishAsync('devices/pub-a/events/e', 'qos1-event', { qos: 1 })
    await dev.client.publishAsync('devices/pub-a/events/e', 'qos2-event', { qos: 2 })
    await dev.client.publishAsync('devices/pub-a/events/e', 'e0', { qos: 0 })
    await dev.client.publishAsync('devices/pub-a/telemetry', 'end', { qos: 1 })

    await ingest.inbox.waitFor('end')
    expect(ingest.inbox.payloads).toEqual(['t1', 's1', 'e0', 'end'])
    expect(dev.client.connected).toBe(true)

    const denied = (topic: string, more: Partial<LogLine> = {}): Promise<LogLine> =>
      audit('publish.denied', (l) => l.id === 'pub-a' && l.topic === topic && Object.entries(more).every(([k, v]) => l[k] === v))
    expect(await denied('devices/pub-b/telemetry')).toMatchObject({ reason: 'no-match', qos: 1, retain: false })
    expect(await denied('devices/pub-a/state', { retain: true })).toMatchObject({ reason: 'condition', statement: 'device-telemetry' })
    expect(await denied('devices/pub-a/events/e', { qos: 1 })).toMatchObject({ reason: 'condition', statement: 'device-telemetry' })
    expect(await denied('devices/pub-a/events/e', { qos: 2 })).toMatchObject({ reason: 'condition' })
    // The refused retained publish was not stored either: a new subscriber gets no retained message for it.
    const late = await connect('pub-late', { kind: 'service', groups: ['ingest'] })
    expect(await subscribe(late.client, ['devices/pub-a/state', 'devices/pub-a/telemetry'])).toEqual([1, 1])
    await dev.client.publishAsync('devices/pub-a/telemetry', 'after', { qos: 1 })
    await late.inbox.waitFor('after')
    expect(late.inbox.payloads).toEqual(['after'])
    // Payloads are never logged, refused or not.
    expect(b.logs.lines.some((l) => JSON.stringify(l).includes('spoof'))).toBe(false)
  })

  test('on the wire: a refused QoS 1 PUBLISH still gets its PUBACK and the connection answers PINGREQ afterwards', async () => {
    const { b } = await start(POLICY)
    const ingest = await connect('wire-ingest', { kind: 'service', groups: ['ingest'] })
    expect(await subscribe(ingest.client, ['devices/#'])).toEqual([1])
    const cred = await credentials('wire-a')
    const raw = await rawTls(b.port, { ca: caPem, cert: cred.certPem, key: cred.keyPem })
    try {
      raw.socket.write(connectPacket({ clientId: 'wire-a' }))
      expect((await raw.waitFor(2, PATIENCE_MS))?.subarray(0, 4)).toEqual(Buffer.from([0x20, 0x02, 0x00, 0x00]))
      raw.received.length = 0
      raw.socket.write(publishPacket('devices/wire-b/telemetry', 'spoof', 1, 0x1234))
      expect((await raw.waitFor(4, PATIENCE_MS))?.subarray(0, 4)).toEqual(Buffer.from([0x40, 0x02, 0x12, 0x34]))
      await audit('publish.denied', (l) => l.id === 'wire-a' && l.topic === 'devices/wire-b/telemetry')
      raw.received.length = 0
      raw.socket.write(Buffer.from([0xc0, 0x00])) // PINGREQ
      expect((await raw.waitFor(13, PATIENCE_MS))?.subarray(0, 2)).toEqual(Buffer.from([0xd0, 0x00]))
      raw.socket.write(publishPacket('devices/wire-a/telemetry', 'own', 1, 0x1235))
      await ingest.inbox.waitFor('own')
      expect(ingest.inbox.payloads).toEqual(['own'])
      expect(raw.isClosed()).toBe(false)
    } finally {
      raw.socket.destroy()
    }
  })
})

describe('subscribe', () => {
  const POLICY = `
policies:
  - name: device-commands
    principals: { kind: device }
    allow:
      subscribe: ["devices/\${id}/commands/#", "fleet/#"]
    deny:
      subscribe: ["fleet/secret/#"]
  - name: commander
    principals: { kind: service, groups: [commands] }
    allow:
      publish: ["devices/+/commands/#", "fleet/#"]
  - name: everything
    principals: { kind: service, groups: [everything] }
    allow:
      subscribe: ["#"]
  - name: sys-monitor
    principals: { kind: service, groups: [sysmon] }
    allow:
      subscribe: ["$SYS/#"]
  - name: sys-writer
    principals: { kind: service, groups: [syswriter] }
    allow:
      publish: ["$SYS/#", "fleet/#"]
`

  test('filters not covered, overlapping a deny, or # and $SYS/# without an explicit statement get 0x80 and receive nothing while messages flow on matching topics', async () => {
    await start(POLICY)
    const cmd = await connect('sub-cmd', { kind: 'service', groups: ['commands'] })
    // The id has a '.', which the policy must take literally (a glob or regex would let "subXd-1" through).
    const dev = await connect('sub.d-1')
    const filters = ['devices/+/commands/#', 'fleet/#', '#', '$SYS/#', 'devices/subXd-1/commands/#', 'devices/sub.d-1/commands/#', 'fleet/public/#']
    expect(await subscribe(dev.client, filters)).toEqual([REFUSED, REFUSED, REFUSED, REFUSED, REFUSED, 1, 1])
    expect(dev.client.connected).toBe(true)

    // Forbidden first, then the allowed sentinels: once those arrive, nothing before them can still come.
    await cmd.client.publishAsync('devices/other-1/commands/reboot', 'other-device', { qos: 1 })
    await cmd.client.publishAsync('devices/subXd-1/commands/reboot', 'lookalike', { qos: 1 })
    await cmd.client.publishAsync('fleet/secret/key', 'secret', { qos: 1 })
    await cmd.client.publishAsync('devices/sub.d-1/commands/reboot', 'own', { qos: 1 })
    await cmd.client.publishAsync('fleet/public/news', 'news', { qos: 1 })
    await dev.inbox.waitFor('news')
    expect(dev.inbox.payloads).toEqual(['own', 'news'])

    const denied = async (filter: string): Promise<LogLine> => await audit('subscribe.denied', (l) => l.id === 'sub.d-1' && l.filter === filter)
    expect(await denied('devices/+/commands/#')).toMatchObject({ reason: 'no-match' })
    expect(await denied('fleet/#')).toMatchObject({ reason: 'denied', statement: 'device-commands' })
    expect(await denied('#')).toMatchObject({ reason: 'denied' }) // it overlaps fleet/secret/#
    expect(await denied('$SYS/#')).toMatchObject({ reason: 'no-match' })
    expect(await denied('devices/subXd-1/commands/#')).toMatchObject({ reason: 'no-match' })
  })

  test('"#" granted by a statement does not reach $SYS; "$SYS/#" needs its own statement, and then it is delivered', async () => {
    await start(POLICY)
    const all = await connect('sub-all', { kind: 'service', groups: ['everything'] })
    expect(await subscribe(all.client, ['#', '$SYS/#'])).toEqual([1, REFUSED])
    const sys = await connect('sub-sys', { kind: 'service', groups: ['sysmon'] })
    expect(await subscribe(sys.client, ['$SYS/#'])).toEqual([1])
    // Aedes announces every new client on $SYS/<broker id>/new/clients.
    const cmd = await connect('sub-cmd2', { kind: 'service', groups: ['commands'] })
    const announced = await sys.inbox.waitFor('sub-cmd2')
    expect(announced.topic.startsWith('$SYS/')).toBe(true)
    await cmd.client.publishAsync('fleet/public/after', 'sentinel', { qos: 1 })
    await all.inbox.waitFor('sentinel')
    expect(all.inbox.messages.filter((m) => m.topic.startsWith('$'))).toEqual([])
  })

  test('nobody publishes under $SYS/, even with a statement granting it: Aedes acts on those topics (new/clients disconnects a client id)', async () => {
    await start(POLICY)
    const victim = await connect('sys-victim')
    const writer = await connect('sys-writer', { kind: 'service', groups: ['syswriter'] })
    const watcher = await connect('sys-watch', { kind: 'service', groups: ['everything'] })
    expect(await subscribe(watcher.client, ['fleet/#'])).toEqual([1])
    await writer.client.publishAsync('$SYS/some-broker/new/clients', 'sys-victim', { qos: 1 })
    await writer.client.publishAsync('fleet/after', 'sentinel', { qos: 1 })
    await watcher.inbox.waitFor('sentinel')
    expect(await audit('publish.denied', (l) => l.id === 'sys-writer')).toMatchObject({ reason: 'sys-reserved', topic: '$SYS/some-broker/new/clients' })
    expect(victim.client.connected).toBe(true)
    expect(writer.client.connected).toBe(true)
  })
})

describe.each(SESSIONS)('restored session ($sessions sessions)', ({ sessions }) => {
  const allowing = `
policies:
  - name: device-commands
    principals: { kind: device }
    allow:
      subscribe: ["devices/\${id}/commands/#", "devices/\${id}/config/#"]
  - name: commander
    principals: { kind: service, groups: [commands] }
    allow:
      publish: ["devices/+/commands/#", "devices/+/config/#"]
      subscribe: ["devices/+/commands/#", "devices/+/config/#"]
`
  const forbidding = allowing.replace('"devices/${id}/commands/#", ', '')
  const rs1 = `rs1-${sessions}-${RUN}`
  const rs2 = `rs2-${sessions}-${RUN}`

  test('a subscription forbidden by the time the client reconnects delivers nothing and is removed from the session store; the allowed one stays and delivers', async () => {
    expect(forbidding).not.toBe(allowing)
    const { b } = await start(allowing, sessions)
    const cmd = await connect(`rs-cmd-${RUN}`, { kind: 'service', groups: ['commands'] })
    const commands = `devices/${rs1}/commands/#`
    const config = `devices/${rs1}/config/#`
    expect(await subscribe(cmd.client, [commands, config])).toEqual([1, 1])
    const first = await connect(rs1, { clean: false })
    expect(await subscribe(first.client, [commands, config])).toEqual([1, 1])
    await disconnect(first.client)

    await reload(forbidding)
    await cmd.client.publishAsync(`devices/${rs1}/commands/q1`, 'queued-while-forbidden', { qos: 1 })
    await cmd.client.publishAsync(`devices/${rs1}/config/q1`, 'queued-config', { qos: 1 })
    await routed(cmd, ['queued-while-forbidden', 'queued-config'])
    const second = await connect(rs1, { clean: false })
    expect(second.sessionPresent).toBe(true)
    // The restored subscription is refused like a live one (audited) and leaves the store; the queued message is withheld.
    await audit('subscribe.denied', (l) => l.id === rs1 && l.filter === commands)
    expect(await audit('subscription.removed', (l) => l.id === rs1 && l.filter === commands)).toMatchObject({ reason: 'no-match', clientId: rs1 })
    expect(await storedSubscriptions(rs1)).toEqual([`${config}@1`])
    await audit('receive.denied', (l) => l.id === rs1 && l.topic === `devices/${rs1}/commands/q1`)
    await second.inbox.waitFor('queued-config')
    await cmd.client.publishAsync(`devices/${rs1}/commands/l1`, 'live-while-forbidden', { qos: 1 })
    await cmd.client.publishAsync(`devices/${rs1}/config/c1`, 'sentinel-1', { qos: 1 })
    await second.inbox.waitFor('sentinel-1')
    expect(second.inbox.payloads).toEqual(['queued-config', 'sentinel-1'])
    await disconnect(second.client)

    // Allowed again, the removed subscription does not come back by itself: nothing is queued for it, nothing delivered.
    await reload(allowing)
    await cmd.client.publishAsync(`devices/${rs1}/commands/q2`, 'not-subscribed-queued', { qos: 1 })
    await cmd.client.publishAsync(`devices/${rs1}/config/q2`, 'queued-config-2', { qos: 1 })
    await routed(cmd, ['not-subscribed-queued', 'queued-config-2'])
    const third = await connect(rs1, { clean: false })
    expect(third.sessionPresent).toBe(true)
    await third.inbox.waitFor('queued-config-2')
    await cmd.client.publishAsync(`devices/${rs1}/commands/l2`, 'not-subscribed-live', { qos: 1 })
    await cmd.client.publishAsync(`devices/${rs1}/config/c2`, 'sentinel-2', { qos: 1 })
    await third.inbox.waitFor('sentinel-2')
    expect(third.inbox.payloads).toEqual(['queued-config-2', 'sentinel-2'])
    // Subscribing again is an ordinary SUBSCRIBE, allowed now.
    expect(await subscribe(third.client, [commands])).toEqual([1])
    await cmd.client.publishAsync(`devices/${rs1}/commands/l3`, 'live-while-allowed', { qos: 1 })
    await third.inbox.waitFor('live-while-allowed')
    expect(third.inbox.payloads).toEqual(['queued-config-2', 'sentinel-2', 'live-while-allowed'])
    // One removal, at the one reconnect that refused it.
    expect(b.logs.lines.filter((l) => l.event === 'subscription.removed' && l.id === rs1).map((l) => l.filter)).toEqual([commands])
  })

  test('filters refused in a SUBSCRIBE that also carried an allowed one are not kept in the persistent session', async () => {
    const { b } = await start(allowing, sessions)
    const cmd = await connect(`rs-cmd2-${RUN}`, { kind: 'service', groups: ['commands'] })
    expect(await subscribe(cmd.client, ['devices/+/commands/#'])).toEqual([1])
    const first = await connect(rs2, { clean: false })
    expect(await subscribe(first.client, [`devices/${rs2}/commands/#`, 'devices/+/commands/#', '#'])).toEqual([1, REFUSED, REFUSED])
    // Aedes stores the whole SUBSCRIBE packet once one filter is granted; the plugin keeps only the granted ones, or a
    // device could have the broker queue every QoS 1 message of the fleet for it while it is offline.
    expect(await storedSubscriptions(rs2)).toEqual([`devices/${rs2}/commands/#@1`])
    await disconnect(first.client)

    await cmd.client.publishAsync(`devices/other-${RUN}/commands/x`, 'not-yours-queued', { qos: 1 })
    await cmd.client.publishAsync(`devices/${rs2}/commands/y`, 'yours-queued', { qos: 1 })
    await routed(cmd, ['not-yours-queued', 'yours-queued'])
    const second = await connect(rs2, { clean: false })
    expect(second.sessionPresent).toBe(true)
    await second.inbox.waitFor('yours-queued')
    await cmd.client.publishAsync(`devices/other-${RUN}/commands/z`, 'not-yours-live', { qos: 1 })
    await cmd.client.publishAsync(`devices/${rs2}/commands/w`, 'yours-live', { qos: 1 })
    await second.inbox.waitFor('yours-live')
    // Once each: a refused filter kept in the session would also match the device's own topics.
    expect(second.inbox.payloads).toEqual(['yours-queued', 'yours-live'])
    // Refused once, at SUBSCRIBE; nothing refused to restore, nothing queued to withhold, nothing to remove.
    expect(b.logs.lines.filter((l) => l.id === rs2 && (l.event === 'subscribe.denied' || l.event === 'receive.denied' || l.event === 'subscription.removed')).map((l) => l.filter ?? l.topic))
      .toEqual(['devices/+/commands/#', '#'])
  })
})

describe('retained', () => {
  const POLICY = `
policies:
  - name: device-status
    principals: { kind: device }
    allow:
      publish: ["devices/\${id}/status"]
  - name: dashboard
    principals: { kind: service, groups: [dashboard] }
    allow:
      subscribe: ["devices/+/status"]
      receive: ["devices/+/status"]
    deny:
      receive: ["devices/vault-1/status"]
`

  test('a retained message on a topic the receiver may not receive is withheld on subscribe; an allowed one is delivered', async () => {
    await start(POLICY)
    const open = await connect('ret-open')
    const vault = await connect('vault-1')
    await vault.client.publishAsync('devices/vault-1/status', 'vault-retained', { qos: 1, retain: true })
    await open.client.publishAsync('devices/ret-open/status', 'open-retained', { qos: 1, retain: true })

    const dash = await connect('ret-dash', { kind: 'service', groups: ['dashboard'] })
    // The filter is allowed (subscribe covers it); receive denies one topic under it.
    expect(await subscribe(dash.client, ['devices/+/status'])).toEqual([1])
    const got = await dash.inbox.waitFor('open-retained')
    expect(got).toMatchObject({ topic: 'devices/ret-open/status', retain: true })
    const line = await audit('receive.denied', (l) => l.id === 'ret-dash' && l.topic === 'devices/vault-1/status')
    expect(line).toMatchObject({ reason: 'denied', statement: 'dashboard' })
    // Live messages on the same topics: the same rule.
    await vault.client.publishAsync('devices/vault-1/status', 'vault-live', { qos: 1 })
    await open.client.publishAsync('devices/ret-open/status', 'open-live', { qos: 1 })
    await dash.inbox.waitFor('open-live')
    expect(dash.inbox.payloads).toEqual(['open-retained', 'open-live'])
  })
})

describe.each(SESSIONS)('QoS caps ($sessions sessions)', ({ sessions }) => {
  const R = `q${RUN}`
  const POLICY = `
policies:
  - name: device-pub
    principals: { kind: device }
    allow:
      publish: ["${R}/devices/\${id}/#", "${R}/slow/#"]
  - name: dashboard
    principals: { kind: service, groups: [dashboard] }
    allow:
      subscribe: ["${R}/devices/#", { topic: "${R}/slow/#", maxQos: 0 }]
      receive:
        - { topic: "${R}/devices/+/status", maxQos: 0 }
        - { topic: "${R}/devices/+/alarm", maxQos: 1 }
        - "${R}/devices/+/events"
        - "${R}/slow/#"
`
  const dashboard: Who = { kind: 'service', groups: ['dashboard'] }
  const ids = (base: string): { dev: string, dash: string } => ({ dev: `${base}-d-${sessions}-${RUN}`, dash: `${base}-s-${sessions}-${RUN}` })
  const received = (inbox: Inbox): string[] => inbox.messages.map((m) => `${m.payload}@${m.qos}`).sort()

  test('live, clean session: QoS 1 capped to 0 and QoS 2 capped to 1 are delivered at the cap, a retained one too; other topics keep their QoS', async () => {
    await start(POLICY, sessions)
    const { dev, dash } = ids('cl')
    const d = await connect(dev)
    const topic = (leaf: string): string => `${R}/devices/${dev}/${leaf}`
    await d.client.publishAsync(topic('status'), 'retained-status', { qos: 1, retain: true })
    const s = await connect(dash, dashboard)
    expect(await subscribe(s.client, [`${R}/devices/#`], 2)).toEqual([2])
    expect(await s.inbox.waitFor('retained-status')).toMatchObject({ qos: 0, retain: true })
    await d.client.publishAsync(topic('status'), 'status-1', { qos: 1 })
    await d.client.publishAsync(topic('status'), 'status-2', { qos: 2 })
    await d.client.publishAsync(topic('alarm'), 'alarm-2', { qos: 2 })
    await d.client.publishAsync(topic('events'), 'events-1', { qos: 1 })
    await d.client.publishAsync(topic('events'), 'events-2', { qos: 2 })
    await s.inbox.waitFor('events-2')
    await s.inbox.waitFor('alarm-2')
    expect(received(s.inbox)).toEqual(['alarm-2@1', 'events-1@1', 'events-2@2', 'retained-status@0', 'status-1@0', 'status-2@0'])
  })

  test('persistent session: capped messages, live and queued while offline, are delivered once at the cap and leave the outgoing queue', async () => {
    await start(POLICY, sessions)
    const { dev, dash } = ids('ps')
    const d = await connect(dev)
    const topic = (leaf: string): string => `${R}/devices/${dev}/${leaf}`
    const observer = await connect(`${dash}-o`, dashboard)
    expect(await subscribe(observer.client, [`${R}/devices/#`], 2)).toEqual([2])
    const first = await connect(dash, { ...dashboard, clean: false })
    expect(await subscribe(first.client, [`${R}/devices/#`], 2)).toEqual([2])
    await d.client.publishAsync(topic('status'), 'live-status', { qos: 1 })
    await d.client.publishAsync(topic('alarm'), 'live-alarm', { qos: 2 })
    await d.client.publishAsync(topic('events'), 'live-events', { qos: 1 })
    for (const p of ['live-status', 'live-alarm', 'live-events']) await first.inbox.waitFor(p)
    expect(received(first.inbox)).toEqual(['live-alarm@1', 'live-events@1', 'live-status@0'])
    // The QoS 0 delivery took its copy out of the queue; the QoS 1 ones were acknowledged.
    await eventually(async () => (await outgoingQueue(dash)).length === 0, PATIENCE_MS, 'an empty outgoing queue')
    await disconnect(first.client)

    await d.client.publishAsync(topic('status'), 'queued-status', { qos: 1 })
    await d.client.publishAsync(topic('status'), 'queued-status-2', { qos: 2 })
    await d.client.publishAsync(topic('alarm'), 'queued-alarm', { qos: 2 })
    await d.client.publishAsync(topic('events'), 'queued-events', { qos: 1 })
    await routed(observer, ['queued-status', 'queued-status-2', 'queued-alarm', 'queued-events'])
    expect((await outgoingQueue(dash)).sort()).toEqual(['queued-alarm', 'queued-events', 'queued-status', 'queued-status-2'])
    const second = await connect(dash, { ...dashboard, clean: false })
    expect(second.sessionPresent).toBe(true)
    for (const p of ['queued-status', 'queued-status-2', 'queued-alarm', 'queued-events']) await second.inbox.waitFor(p)
    expect(received(second.inbox)).toEqual(['queued-alarm@1', 'queued-events@1', 'queued-status-2@0', 'queued-status@0'])
    await eventually(async () => (await outgoingQueue(dash)).length === 0, PATIENCE_MS, 'an empty outgoing queue')
    await disconnect(second.client)

    // Nothing comes back at the next reconnect: only what is published now.
    const third = await connect(dash, { ...dashboard, clean: false })
    expect(third.sessionPresent).toBe(true)
    await d.client.publishAsync(topic('events'), 'sentinel', { qos: 1 })
    await third.inbox.waitFor('sentinel')
    expect(third.inbox.payloads).toEqual(['sentinel'])
  })

  test('persistent session: messages it may not receive leave its outgoing queue and take no other queued message with them', async () => {
    await start(POLICY, sessions)
    const { dev, dash } = ids('pd')
    const d = await connect(dev)
    const topic = (leaf: string): string => `${R}/devices/${dev}/${leaf}`
    const first = await connect(dash, { ...dashboard, clean: false })
    expect(await subscribe(first.client, [`${R}/devices/#`], 1)).toEqual([1])
    // Refused and allowed interleaved, all in flight at once: each refused one is cleared by its own message id.
    const order = ['allowed-1', 'refused-1', 'allowed-2', 'refused-2', 'refused-3', 'allowed-3']
    await Promise.all(order.map((p) => d.client.publishAsync(topic(p.startsWith('allowed') ? 'events' : 'secret'), p, { qos: 1 })))
    for (const p of ['allowed-1', 'allowed-2', 'allowed-3']) await first.inbox.waitFor(p)
    await audit('receive.denied', (l) => l.id === dash && l.topic === topic('secret'))
    await eventually(async () => (await outgoingQueue(dash)).length === 0, PATIENCE_MS, 'an empty outgoing queue')
    expect(first.client.connected).toBe(true)
    expect([...first.inbox.payloads].sort()).toEqual(['allowed-1', 'allowed-2', 'allowed-3'])
    await disconnect(first.client)

    // Nothing refused comes back at the next reconnect.
    const second = await connect(dash, { ...dashboard, clean: false })
    expect(second.sessionPresent).toBe(true)
    await d.client.publishAsync(topic('events'), 'sentinel', { qos: 1 })
    await second.inbox.waitFor('sentinel')
    expect(second.inbox.payloads).toEqual(['sentinel'])
  })

  test('SUBACK carries the granted QoS (a subscribe entry\'s maxQos), pipelined with CONNECT too; the session is stored and restored at it', async () => {
    const { b } = await start(POLICY, sessions)
    const { dev, dash } = ids('sa')
    const d = await connect(dev)
    const first = await connect(dash, { ...dashboard, clean: false })
    expect(await subscribe(first.client, [`${R}/slow/#`, `${R}/devices/+/events`], 1)).toEqual([0, 1])
    expect(await storedSubscriptions(dash)).toEqual([`${R}/devices/+/events@1`, `${R}/slow/#@0`])
    await d.client.publishAsync(`${R}/slow/a`, 'slow-live', { qos: 1 })
    expect(await first.inbox.waitFor('slow-live')).toMatchObject({ qos: 0 })
    await disconnect(first.client)

    const second = await connect(dash, { ...dashboard, clean: false })
    expect(second.sessionPresent).toBe(true)
    await d.client.publishAsync(`${R}/slow/b`, 'slow-restored', { qos: 1 })
    await d.client.publishAsync(`${R}/devices/${dev}/events`, 'events-restored', { qos: 1 })
    expect(await second.inbox.waitFor('slow-restored')).toMatchObject({ qos: 0 })
    expect(await second.inbox.waitFor('events-restored')).toMatchObject({ qos: 1 })

    // A SUBSCRIBE sent in the same write as the CONNECT is parsed before there is an identity: granted at admission.
    const { dash: rawDash } = ids('sr')
    const cred = await credentials(rawDash, dashboard)
    const raw = await rawTls(b.port, { ca: caPem, cert: cred.certPem, key: cred.keyPem })
    try {
      raw.socket.write(Buffer.concat([connectPacket({ clientId: rawDash }), subscribePacket(`${R}/slow/#`, 1, 7)]))
      await eventually(() => Buffer.concat(raw.received).length >= 9, PATIENCE_MS, 'CONNACK and SUBACK')
      // CONNACK accepted, then SUBACK for message id 7 granting QoS 0.
      expect(Buffer.concat(raw.received).subarray(0, 9)).toEqual(Buffer.from([0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x07, 0x00]))
    } finally {
      raw.socket.destroy()
    }
  })
})

describe('queued offline', () => {
  const allowing = `
policies:
  - name: device-commands
    principals: { kind: device }
    allow:
      subscribe: ["devices/\${id}/commands/#"]
  - name: commander
    principals: { kind: service, groups: [commands] }
    allow:
      publish: ["devices/+/commands/#"]
`
  // Still subscribable (so this is about the queue, not the restored subscription), but no longer receivable.
  const withholding = allowing.replace('subscribe: ["devices/${id}/commands/#"]', 'subscribe: ["devices/${id}/commands/#"]\n    deny:\n      receive: ["devices/${id}/commands/secret/#"]')

  test('QoS 1 messages queued for an offline session are delivered on reconnect when allowed, and withheld when the policy forbids them by then', async () => {
    expect(withholding).not.toBe(allowing)
    await start(allowing)
    const cmd = await connect('qo-cmd', { kind: 'service', groups: ['commands'] })
    const s1 = await connect('qo-1', { clean: false })
    expect(await subscribe(s1.client, ['devices/qo-1/commands/#'])).toEqual([1])
    await disconnect(s1.client)

    await cmd.client.publishAsync('devices/qo-1/commands/a', 'a', { qos: 1 })
    await cmd.client.publishAsync('devices/qo-1/commands/b', 'b', { qos: 1 })
    const s2 = await connect('qo-1', { clean: false })
    expect(s2.sessionPresent).toBe(true)
    await s2.inbox.waitFor('b')
    expect(s2.inbox.payloads).toEqual(['a', 'b'])
    await disconnect(s2.client)

    // Queued while allowed...
    await cmd.client.publishAsync('devices/qo-1/commands/secret/key', 'secret', { qos: 1 })
    await cmd.client.publishAsync('devices/qo-1/commands/c', 'c', { qos: 1 })
    // ...forbidden before the client comes back.
    await reload(withholding)
    const s3 = await connect('qo-1', { clean: false })
    expect(s3.sessionPresent).toBe(true)
    await s3.inbox.waitFor('c')
    expect(s3.inbox.payloads).toEqual(['c'])
    expect(await audit('receive.denied', (l) => l.id === 'qo-1' && l.topic === 'devices/qo-1/commands/secret/key')).toMatchObject({ reason: 'denied', statement: 'device-commands' })
  })
})

describe('will', () => {
  const POLICY = `
policies:
  - name: device-status
    principals: { kind: device }
    allow:
      publish: ["devices/\${id}/status"]
  - name: watcher
    principals: { kind: service, groups: [watch] }
    allow:
      subscribe: ["devices/+/status"]
`
  const will = (topic: string, payload: string): NonNullable<IClientOptions['will']> => ({ topic, payload: Buffer.from(payload), qos: 1, retain: false })

  test('a forbidden will refuses the connection with CONNACK 5; an allowed will is published when the socket dies', async () => {
    const { b } = await start(POLICY)
    const watch = await connect('will-watch', { kind: 'service', groups: ['watch'] })
    expect(await subscribe(watch.client, ['devices/+/status'])).toEqual([1])

    const bad = await credentials('will-bad')
    const o = await tryConnect(b.url, { ...tlsFor(caPem, bad), clientId: 'will-bad', will: will('devices/will-other/status', 'forbidden-will') }, PATIENCE_MS)
    env().clients.push(o.client)
    expect([o.connected, o.code]).toEqual([false, 5])
    expect(await audit('connect.refused', (l) => l.id === 'will-bad' && l.reason === 'will-forbidden')).toMatchObject({ code: 5 })
    // The same CONNECT byte for byte on a raw TLS socket: CONNACK 5, then the close.
    const raw = await rawTls(b.port, { ca: caPem, cert: bad.certPem, key: bad.keyPem })
    try {
      raw.socket.write(connectPacket({ clientId: 'will-bad', will: { topic: 'devices/will-other/status', payload: 'forbidden-will', qos: 1 } }))
      expect((await raw.waitFor(2, PATIENCE_MS))?.subarray(0, 4)).toEqual(Buffer.from([0x20, 0x02, 0x00, 0x05]))
      expect(await closesWithin(raw, PATIENCE_MS)).toBe(true)
    } finally {
      raw.socket.destroy()
    }

    const good = await connect('will-good', { will: will('devices/will-good/status', 'good-offline') })
    ;(good.client.stream as TLSSocket).destroy()
    expect(await watch.inbox.waitFor('good-offline')).toMatchObject({ topic: 'devices/will-good/status' })
    expect(watch.inbox.payloads).toEqual(['good-offline'])
  })

  test('a will allowed at CONNECT but forbidden by a reload before the client dies is not published', async () => {
    await start(POLICY)
    const watch = await connect('wc-watch', { kind: 'service', groups: ['watch'] })
    expect(await subscribe(watch.client, ['devices/+/status'])).toEqual([1])
    const doomed = await connect('wc-1', { will: will('devices/wc-1/status', 'stale-will') })
    const other = await connect('wd-1')

    await reload(`${POLICY}
  - name: silence-wc
    principals: { ids: ["wc-*"] }
    deny:
      publish: ["devices/\${id}/status"]
`)
    ;(doomed.client.stream as TLSSocket).destroy()
    // Judged again at publish time, under the new set.
    expect(await audit('publish.denied', (l) => l.id === 'wc-1' && l.topic === 'devices/wc-1/status')).toMatchObject({ reason: 'denied', statement: 'silence-wc' })
    await other.client.publishAsync('devices/wd-1/status', 'sentinel', { qos: 1 })
    await watch.inbox.waitFor('sentinel')
    expect(watch.inbox.payloads).toEqual(['sentinel'])
  })
})

describe('hot reload', () => {
  const v1 = `
policies:
  - name: device-pub
    principals: { kind: device }
    allow:
      publish: ["devices/\${id}/a", "devices/\${id}/telemetry", "devices/\${id}/events"]
  - name: ingest
    principals: { kind: service, groups: [ingest] }
    allow:
      subscribe: ["devices/+/telemetry", "devices/+/events", "devices/+/a", "devices/+/b"]
`
  const v2 = `
policies:
  - name: device-pub
    principals: { kind: device }
    allow:
      publish: ["devices/\${id}/b", "devices/\${id}/telemetry", "devices/\${id}/events"]
  - name: ingest
    principals: { kind: service, groups: [ingest] }
    allow:
      subscribe: ["devices/+/events", "devices/+/a", "devices/+/b"]
`

  test('a valid change applies to connected clients at their next action, a live subscription no longer allowed stops at once, an invalid change is logged and the last good set stays', async () => {
    const { b } = await start(v1)
    const ingest = await connect('hr-ingest', { kind: 'service', groups: ['ingest'] })
    expect(await subscribe(ingest.client, ['devices/+/telemetry', 'devices/+/events', 'devices/+/a', 'devices/+/b'])).toEqual([1, 1, 1, 1])
    const dev = await connect('hr-1')
    await dev.client.publishAsync('devices/hr-1/a', 'a1', { qos: 1 })
    await dev.client.publishAsync('devices/hr-1/b', 'b1-forbidden', { qos: 1 })
    await dev.client.publishAsync('devices/hr-1/telemetry', 't1', { qos: 1 })
    await dev.client.publishAsync('devices/hr-1/events', 'e1', { qos: 1 })
    await ingest.inbox.waitFor('e1')
    expect(ingest.inbox.payloads).toEqual(['a1', 't1', 'e1'])

    const generation = await reload(v2)
    // Same connections, next actions: the publisher's rules changed, and the subscriber's telemetry subscription,
    // still registered in Aedes, no longer delivers (it is judged on every delivery).
    await dev.client.publishAsync('devices/hr-1/a', 'a2-forbidden', { qos: 1 })
    await dev.client.publishAsync('devices/hr-1/telemetry', 't2-forbidden', { qos: 1 })
    await dev.client.publishAsync('devices/hr-1/b', 'b2', { qos: 1 })
    await dev.client.publishAsync('devices/hr-1/events', 'e2', { qos: 1 })
    await ingest.inbox.waitFor('e2')
    expect(ingest.inbox.payloads).toEqual(['a1', 't1', 'e1', 'b2', 'e2'])
    await audit('publish.denied', (l) => l.id === 'hr-1' && l.topic === 'devices/hr-1/a')
    expect(await audit('receive.denied', (l) => l.id === 'hr-ingest' && l.topic === 'devices/hr-1/telemetry')).toMatchObject({ reason: 'no-match' })
    expect(await subscribe(ingest.client, ['devices/+/telemetry'])).toEqual([REFUSED])
    expect([dev.client.connected, ingest.client.connected]).toEqual([true, true])

    // An invalid file ('#' not as the last level) makes the whole directory invalid: refused, the last good set stays.
    await putPolicy('policies:\n  - name: broken\n    allow: { publish: ["devices/#/b"] }\n', 'zz-broken.yaml')
    const rejected = await audit('policies.rejected', () => true)
    expect(rejected.reason).toMatch(/zz-broken\.yaml/)
    expect(b.broker.policies.current().generation).toBe(generation)
    await dev.client.publishAsync('devices/hr-1/a', 'a3-forbidden', { qos: 1 })
    await dev.client.publishAsync('devices/hr-1/telemetry', 't3-forbidden', { qos: 1 })
    await dev.client.publishAsync('devices/hr-1/b', 'b3', { qos: 1 })
    await dev.client.publishAsync('devices/hr-1/events', 'e3', { qos: 1 })
    await ingest.inbox.waitFor('e3')
    expect(ingest.inbox.payloads).toEqual(['a1', 't1', 'e1', 'b2', 'e2', 'b3', 'e3'])
    expect(b.logs.lines.some((l) => l.event === 'policies.reloaded' && (l.generation as number) > generation)).toBe(false)
  })
})
