// Interop: a real Mosquitto bridges into our broker with a service certificate (group bridge) and stays inside its policy.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Client } from 'aedes'
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, test } from 'vitest'
import { connectOk, endClient, nextMessage, startTestBroker, tlsFor, type TestBroker } from './helpers/mqtt.js'
import { makeTestCa, type TestCa } from './helpers/pki.js'

const MOSQUITTO = '/usr/sbin/mosquitto'
const BRIDGE_ID = 'edge-bridge-1'

// What the bridge group may do comes from the shipped policies/default.yaml; this file only adds a reader of bridge/#
// so the test can watch what the bridge publishes.
const READERS = `
policies:
  - name: bridge-readers
    principals: { kind: service, groups: [bridge-readers] }
    allow:
      subscribe: ["bridge/#"]
`

let ca: TestCa
let b: TestBroker
let caPem: string
let dir: string
let bridgeSerial: string
let mosquitto: ChildProcess | undefined
let mosquittoLog = ''
let localPort = 0
const open: MqttClient[] = []

/** A free local port for Mosquitto's own listener (never 1883): bind port 0, read it, release it. */
async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = net.createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo
      s.close(() => { resolve(port) })
    })
  })
}

/** Sets a directive of a mosquitto config (replacing its line, which must exist): the example is what gets tested. */
function setDirective (conf: string, key: string, value: string): string {
  const re = new RegExp(`^${key} .*$`, 'm')
  if (!re.test(conf)) throw new Error(`examples/mosquitto-bridge.conf has no "${key}" line`)
  return conf.replace(re, `${key} ${value}`)
}

/** examples/mosquitto-bridge.conf with this test's ports and files, quick retries, and two mappings outside the policy. */
function mosquittoConfig (o: { localPort: number, remotePort: number, cafile: string, certfile: string, keyfile: string }): string {
  let conf = readFileSync(fileURLToPath(new URL('../examples/mosquitto-bridge.conf', import.meta.url)), 'utf8')
  conf = setDirective(conf, 'listener', `${o.localPort} 127.0.0.1`)
  conf = setDirective(conf, 'address', `127.0.0.1:${o.remotePort}`)
  conf = setDirective(conf, 'bridge_cafile', o.cafile)
  conf = setDirective(conf, 'bridge_certfile', o.certfile)
  conf = setDirective(conf, 'bridge_keyfile', o.keyfile)
  conf = setDirective(conf, 'remote_clientid', BRIDGE_ID)
  conf = setDirective(conf, 'restart_timeout', '1')
  return [
    // As root, mosquitto would switch to the "mosquitto" user and lose access to the 0600 key in our temp dir.
    `user ${os.userInfo().username}`,
    'log_dest stdout',
    'log_type error',
    'log_type warning',
    'log_type notice',
    'log_type information',
    conf,
    // Outside the bridge policy, on purpose: the broker must refuse both (SUBACK 0x80, publish dropped).
    'topic devices/+/telemetry in 0',
    'topic devices/+/commands/# out 1',
    '',
  ].join('\n')
}

function bridgeSubscribed (topic: string): Promise<void> {
  return new Promise((resolve) => {
    const onSub = (subs: Array<{ topic: string }>, client: Client): void => {
      if (client.id === BRIDGE_ID && subs.some((s) => s.topic === topic)) {
        b.broker.aedes.off('subscribe', onSub)
        resolve()
      }
    }
    b.broker.aedes.on('subscribe', onSub)
  })
}

async function local (clientId: string): Promise<MqttClient> {
  const c = await new Promise<MqttClient>((resolve, reject) => {
    const client = mqtt.connect(`mqtt://127.0.0.1:${localPort}`, { clientId, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000 })
    client.once('connect', () => { resolve(client) })
    client.once('error', reject)
  })
  open.push(c)
  return c
}

const haveMosquitto = existsSync(MOSQUITTO)
// Skipping is for a developer's machine without Debian's mosquitto; in CI (.ci/run installs it) a missing binary fails.
const skip = !haveMosquitto && process.env.CI === undefined

beforeAll(async () => {
  if (skip) return
  if (!haveMosquitto) throw new Error(`${MOSQUITTO} is missing; .ci/run installs the mosquitto package`)
  ca = await makeTestCa()
  caPem = readFileSync(path.join(ca.home, 'ca.pem'), 'utf8')
  dir = await mkdtemp(path.join(os.tmpdir(), 'aedes-zt-bridge-'))
  const policies = path.join(dir, 'policies')
  await mkdir(policies)
  await copyFile(fileURLToPath(new URL('../policies/default.yaml', import.meta.url)), path.join(policies, 'default.yaml'))
  await writeFile(path.join(policies, 'readers.yaml'), READERS)
  b = await startTestBroker(ca.home, { policies })

  // The bridge's identity: a service certificate in group "bridge", as `aedes-zt cert issue edge-bridge-1 --kind service --group bridge` makes.
  const cred = await ca.issueDevice(BRIDGE_ID, { kind: 'service', groups: ['bridge'] })
  bridgeSerial = cred.serial
  await writeFile(path.join(dir, 'bridge.pem'), cred.bundlePem)
  await writeFile(path.join(dir, 'bridge.key'), cred.keyPem, { mode: 0o600 })
  localPort = await freePort()
  const conf = path.join(dir, 'mosquitto.conf')
  await writeFile(conf, mosquittoConfig({ localPort, remotePort: b.port, cafile: path.join(ca.home, 'ca.pem'), certfile: path.join(dir, 'bridge.pem'), keyfile: path.join(dir, 'bridge.key') }))

  const subscribed = bridgeSubscribed('devices/+/events/#')
  mosquitto = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] })
  mosquitto.stdout?.on('data', (d: Buffer) => { mosquittoLog += d.toString('utf8') })
  mosquitto.stderr?.on('data', (d: Buffer) => { mosquittoLog += d.toString('utf8') })
  const exited = new Promise<never>((_resolve, reject) => { mosquitto?.once('exit', (code) => { reject(new Error(`mosquitto exited (${String(code)}):\n${mosquittoLog}`)) }) })
  const timeout = new Promise<never>((_resolve, reject) => { setTimeout(() => { reject(new Error(`the bridge did not subscribe within 20 s; mosquitto said:\n${mosquittoLog}`)) }, 20_000).unref() })
  await Promise.race([subscribed, exited, timeout])
  exited.catch(() => {})
})

afterAll(async () => {
  await Promise.all(open.map(endClient))
  if (mosquitto !== undefined && mosquitto.exitCode === null) {
    const gone = new Promise<void>((resolve) => { mosquitto?.once('exit', () => { resolve() }) })
    mosquitto.kill('SIGTERM')
    await Promise.race([gone, new Promise<void>((resolve) => { setTimeout(() => { mosquitto?.kill('SIGKILL'); resolve() }, 3000) })])
  }
  await b?.close()
  await ca?.cleanup()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

describe.skipIf(skip)('Mosquitto bridge with a service certificate', () => {
  test('the bridge connects as its service identity', async () => {
    const line = await b.logs.waitFor((l) => l.event === 'connect.accepted' && l.id === BRIDGE_ID)
    expect(line).toMatchObject({ kind: 'service', groups: ['bridge'], clientId: BRIDGE_ID, serial: bridgeSerial })
    // Its subscription outside the policy was refused with SUBACK 0x80, and the connection stayed.
    expect(await b.logs.waitFor((l) => l.event === 'subscribe.denied' && l.id === BRIDGE_ID)).toMatchObject({ filter: 'devices/+/telemetry' })
  })

  test('device events flow from our broker into Mosquitto; telemetry (outside the policy) does not', async () => {
    const sub = await local('local-events-reader')
    await sub.subscribeAsync('devices/#', { qos: 1 })
    const dev = await connectOk(b.url, { ...tlsFor(caPem, await ca.issueDevice('dev-1')), clientId: 'dev-1' })
    open.push(dev)
    const telemetry = nextMessage(sub, 'devices/dev-1/telemetry', 3000)
    const event = nextMessage(sub, 'devices/dev-1/events/alarm', 10_000)
    // Same publisher, same QoS, in order: had telemetry crossed the bridge, it would arrive before the event.
    await dev.publishAsync('devices/dev-1/telemetry', '21.5', { qos: 1 })
    await dev.publishAsync('devices/dev-1/events/alarm', 'door open', { qos: 1 })
    expect((await event)?.payload.toString()).toBe('door open')
    expect(await telemetry).toBeNull()
  })

  test('bridge/ flows from Mosquitto into our broker; commands (outside the policy) are dropped', async () => {
    const reader = await connectOk(b.url, { ...tlsFor(caPem, await ca.issueDevice('bridge-reader-1', { kind: 'service', groups: ['bridge-readers'] })), clientId: 'bridge-reader-1' })
    open.push(reader)
    await reader.subscribeAsync('bridge/#', { qos: 1 })
    const target = await connectOk(b.url, { ...tlsFor(caPem, await ca.issueDevice('dev-2')), clientId: 'dev-2' })
    open.push(target)
    await target.subscribeAsync('devices/dev-2/commands/#', { qos: 1 })
    const pub = await local('local-publisher')
    const status = nextMessage(reader, 'bridge/site-a/status', 10_000)
    const command = nextMessage(target, 'devices/dev-2/commands/reboot', 3000)
    await pub.publishAsync('devices/dev-2/commands/reboot', 'now', { qos: 1 })
    await pub.publishAsync('bridge/site-a/status', 'online', { qos: 1 })
    expect((await status)?.payload.toString()).toBe('online')
    expect(await command).toBeNull()
    expect(await b.logs.waitFor((l) => l.event === 'publish.denied' && l.id === BRIDGE_ID)).toMatchObject({ topic: 'devices/dev-2/commands/reboot', serial: bridgeSerial })
  })

  test('revoking the bridge certificate cuts it off, and its reconnects are refused', async () => {
    const reader = await connectOk(b.url, { ...tlsFor(caPem, await ca.issueDevice('bridge-reader-2', { kind: 'service', groups: ['bridge-readers'] })), clientId: 'bridge-reader-2' })
    open.push(reader)
    await reader.subscribeAsync('bridge/#', { qos: 1 })
    await ca.authority.revoke({ serial: bridgeSerial }, 'keyCompromise')
    expect(await b.logs.waitFor((l) => l.event === 'revocation.enforced' && l.serial === bridgeSerial)).toMatchObject({ id: BRIDGE_ID, sessions: 1, reason: 'keyCompromise' })
    // Mosquitto retries every second (restart_timeout 1); each try must be refused as revoked.
    const refused = await b.logs.waitFor((l) => l.event === 'connect.refused' && l.serial === bridgeSerial, 15_000)
    expect(refused).toMatchObject({ id: BRIDGE_ID, reason: 'revoked', code: 5 })
    const pub = await local('local-publisher-2')
    const leaked = nextMessage(reader, 'bridge/site-a/after', 3000)
    await pub.publishAsync('bridge/site-a/after', 'still there?', { qos: 1 })
    expect(await leaked).toBeNull()
    const admitted = b.logs.lines.filter((l) => l.event === 'connect.accepted' && l.serial === bridgeSerial)
    expect(admitted).toHaveLength(1)
  })
})
