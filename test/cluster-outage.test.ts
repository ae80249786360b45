// A Redis-backed node that starts while Redis is down stays up, admits no one, and joins by itself when Redis returns.
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, expect, test } from 'vitest'
import { startTestBroker, tlsFor, tryConnect, type TestBroker } from './helpers/mqtt.js'
import { makeTestCa, type TestCa } from './helpers/pki.js'
import { eventually, startRedisServer, TcpProxy, type RedisServerProcess } from './helpers/redis.js'

let dir: string
let redis: RedisServerProcess
let ca: TestCa
let caPem: string
const brokers: TestBroker[] = []
const proxies: TcpProxy[] = []

beforeAll(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-outage-'))
  redis = await startRedisServer(dir, { appendfsync: 'everysec' })
  ca = await makeTestCa({ redisUrl: redis.url })
  caPem = await fs.readFile(path.join(ca.home, 'ca.pem'), 'utf8')
})

afterAll(async () => {
  for (const b of brokers) await b.close()
  for (const p of proxies) await p.close()
  await ca?.cleanup()
  await redis?.stop()
  if (dir !== undefined) await fs.rm(dir, { recursive: true, force: true })
})

async function cutProxy (): Promise<TcpProxy> {
  const p = await TcpProxy.start(redis.url)
  proxies.push(p)
  p.cut()
  return p
}

async function healthz (b: TestBroker): Promise<number> {
  return (await fetch(`http://127.0.0.1:${b.broker.httpPort ?? 0}/healthz`)).status
}

test('starts while Redis is down: CONNACK 3 and /healthz 503 until Redis answers, then admits', async () => {
  const d = await ca.issueDevice('early-bird')
  const proxy = await cutProxy()
  const b = await startTestBroker(ca.home, { redisUrl: proxy.url, cluster: { heartbeatMs: 500 } })
  brokers.push(b)
  expect(b.broker.admitting()).toBe(false)
  expect(await healthz(b)).toBe(503)
  const refused = await tryConnect(b.url, { ...tlsFor(caPem, d), clientId: 'early-bird' })
  refused.client.end(true)
  expect(refused.code).toBe(3)
  await b.logs.waitFor((l) => l.event === 'connect.refused' && l.reason === 'revocation-not-current' && l.serial === d.serial)

  proxy.restore()
  await eventually(async () => await healthz(b) === 200, 20_000, '/healthz 200 once Redis answers')
  expect(b.broker.sessionsReady()).toBe(true)
  const admitted = await tryConnect(b.url, { ...tlsFor(caPem, d), clientId: 'early-bird' })
  admitted.client.end(true)
  expect(admitted.connected).toBe(true)
})

test('a node started during an outage still shuts down promptly', async () => {
  const proxy = await cutProxy()
  const b = await startTestBroker(ca.home, { redisUrl: proxy.url })
  expect(b.broker.admitting()).toBe(false)
  // Resolving at all is the point: QUIT on a dead link never completes, and nothing else would end it.
  await b.close()
  expect(b.logs.find((l) => l.event === 'broker.stopped')).toBeDefined()
})

test('the file store still fails to start when the home cannot be read', async () => {
  await expect(startTestBroker(path.join(dir, 'no-such-home'))).rejects.toThrow(/does not exist/)
})
