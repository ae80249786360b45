// The shipped mqtt.js backend example, run as a child process with service certificates against a broker on port 0.
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, expect, test } from 'vitest'
import { connectOk, endClient, nextMessage, startTestBroker, tlsFor, type TestBroker } from './helpers/mqtt.js'
import { makeTestCa, type TestCa } from './helpers/pki.js'

const EXAMPLE = fileURLToPath(new URL('../examples/backend-mqttjs.mjs', import.meta.url))
const ROOT = fileURLToPath(new URL('..', import.meta.url))

let ca: TestCa
let b: TestBroker
let caPem: string
let dir: string
const children: ChildProcess[] = []
const clients: MqttClient[] = []

beforeAll(async () => {
  ca = await makeTestCa()
  caPem = readFileSync(path.join(ca.home, 'ca.pem'), 'utf8')
  dir = await mkdtemp(path.join(os.tmpdir(), 'aedes-zt-backends-'))
  b = await startTestBroker(ca.home)
})
afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
  await Promise.all(clients.map(endClient))
  await b?.close()
  await ca?.cleanup()
  if (dir !== undefined) await rm(dir, { recursive: true, force: true })
})

/** Issues a service certificate into files and runs the example as that service; stdout is collected. */
async function runExample (id: string, groups: string[], args: string[]): Promise<{ child: ChildProcess, out: () => string, exited: Promise<number | null> }> {
  const cred = await ca.issueDevice(id, { kind: 'service', groups })
  await writeFile(path.join(dir, `${id}.pem`), cred.bundlePem)
  await writeFile(path.join(dir, `${id}.key`), cred.keyPem, { mode: 0o600 })
  const child = spawn(process.execPath, [EXAMPLE, ...args], {
    // From the checkout, so the example resolves `mqtt` the way a reader running it would.
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', MQTT_URL: `mqtts://localhost:${b.port}`, ZT_ID: id, ZT_CA: path.join(ca.home, 'ca.pem'), ZT_CERT: path.join(dir, `${id}.pem`), ZT_KEY: path.join(dir, `${id}.key`) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  children.push(child)
  let out = ''
  child.stdout?.on('data', (d: Buffer) => { out += d.toString('utf8') })
  child.stderr?.on('data', (d: Buffer) => { out += d.toString('utf8') })
  const exited = new Promise<number | null>((resolve) => { child.once('exit', (code) => { resolve(code) }) })
  return { child, out: () => out, exited }
}

async function until (what: string, check: () => boolean, out: () => string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms; the example printed:\n${out()}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

test('ingest: a service in group ingest subscribes and receives device telemetry and events', async () => {
  const ex = await runExample('ingest-1', ['ingest'], [])
  await until('both subscriptions', () => ex.out().includes('subscribed devices/+/telemetry qos 1') && ex.out().includes('subscribed devices/+/events/# qos 1'), ex.out)
  const dev = await connectOk(b.url, { ...tlsFor(caPem, await ca.issueDevice('sensor-a')), clientId: 'sensor-a' })
  clients.push(dev)
  await dev.publishAsync('devices/sensor-a/telemetry', '21.5', { qos: 1 })
  await dev.publishAsync('devices/sensor-a/events/door', 'open', { qos: 1 })
  await until('both messages', () => ex.out().includes('devices/sensor-a/telemetry 21.5') && ex.out().includes('devices/sensor-a/events/door open'), ex.out)
  ex.child.kill('SIGTERM')
  await ex.exited
})

test('command: a service in group commands sends one command, which reaches the device', async () => {
  const dev = await connectOk(b.url, { ...tlsFor(caPem, await ca.issueDevice('sensor-b')), clientId: 'sensor-b' })
  clients.push(dev)
  await dev.subscribeAsync('devices/sensor-b/commands/#', { qos: 1 })
  const got = nextMessage(dev, 'devices/sensor-b/commands/reboot', 10_000)
  const ex = await runExample('cmd-1', ['commands'], ['command', 'sensor-b', 'reboot'])
  expect(await ex.exited).toBe(0)
  expect(ex.out()).toContain('sent devices/sensor-b/commands/reboot')
  expect(await got).not.toBeNull()
})

test('an ingest service may not send commands: the broker drops the publish and logs it', async () => {
  const ex = await runExample('ingest-2', ['ingest'], ['command', 'sensor-b', 'reboot'])
  expect(await ex.exited).toBe(0)
  expect(await b.logs.waitFor((l) => l.event === 'publish.denied' && l.id === 'ingest-2')).toMatchObject({ topic: 'devices/sensor-b/commands/reboot', reason: 'no-match' })
})
