// keyCompromise on one node (in-memory sessions): the revoked certificate's retained messages go, everyone else's stay,
// including a newer certificate of the same id (the tag is the serial, not the id).
import { readFileSync } from 'node:fs'
import path from 'node:path'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, expect, test } from 'vitest'
import { connectOk, endClient, startTestBroker, tlsFor, type TestBroker } from './helpers/mqtt.js'
import { makeTestCa, type TestCa } from './helpers/pki.js'
import { eventually } from './helpers/redis.js'

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
