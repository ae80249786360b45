// `aedes-zt broker --dev` end to end: first run makes the dev home and demo certificates, and the printed
// mosquitto_sub/mosquitto_pub lines work as a newcomer would paste them.
import { exec } from 'node:child_process'
import { promises as fs } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { PassThrough } from 'node:stream'
import { promisify } from 'node:util'
import { afterAll, beforeAll, expect, test } from 'vitest'
import { runBroker } from '../cli/broker.js'
import { main, type CommandContext } from '../cli/main.js'
import type { RunningBroker } from '../broker/server.js'
import { LogCapture } from './helpers/mqtt.js'

const sh = promisify(exec)
let dir: string
let cwd: string

beforeAll(async () => {
  cwd = process.cwd()
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'aedes-zt-cli-'))
  process.chdir(dir)
})
afterAll(async () => {
  process.chdir(cwd)
  await fs.rm(dir, { recursive: true, force: true })
})

function ctxFor (values: CommandContext['values'], stdout: PassThrough): CommandContext {
  return { home: './certs-dev', homeIsDefault: true, redisUrl: undefined, values, positionals: [], stdout, stderr: new PassThrough(), env: {} }
}

test('broker --dev creates the dev home, prints working mosquitto lines, and stops on abort', async () => {
  const stdout = new PassThrough()
  let text = ''
  stdout.on('data', (d: Buffer) => { text += d.toString() })
  const stop = new AbortController()
  let broker: RunningBroker | undefined
  const started = new Promise<void>((resolve) => {
    void runBroker(ctxFor({ dev: true, port: '0', 'http-port': '0', host: '127.0.0.1' }, stdout), {
      signal: stop.signal,
      logStream: new LogCapture(),
      onStarted: (b) => { broker = b; resolve() },
    }).then((code) => { text += `\nexit ${code}` })
  })
  await started
  expect(text).toMatch(/dev CA passphrase was generated and kept in .*private\/passphrase/)
  for (const id of ['sensor-1', 'sensor-2', 'backend-1']) {
    expect((await fs.stat(path.join(dir, 'certs-dev', 'devices', `${id}.key`))).mode & 0o777).toBe(0o600)
  }
  const sub = /^\s+(mosquitto_sub .*)$/m.exec(text)?.[1]
  const pub = /^\s+(mosquitto_pub .*)$/m.exec(text)?.[1]
  expect(sub).toContain('--cafile certs-dev/ca.pem')
  expect(pub).toContain('-t devices/sensor-1/telemetry')
  const received = sh(`${sub ?? ''} -C 1 -W 10`, { cwd: dir })
  await new Promise((r) => setTimeout(r, 500))
  await sh(pub ?? '', { cwd: dir })
  const { stdout: got } = await received
  expect(got.trim()).toBe('devices/sensor-1/telemetry {"temp":21.5}')
  expect(broker?.port).toBeGreaterThan(0)
  stop.abort()
  await new Promise((r) => setTimeout(r, 300))
  expect(text).toContain('exit 0')

  // Second run reuses the home: nothing is created again.
  const again = new PassThrough()
  let text2 = ''
  again.on('data', (d: Buffer) => { text2 += d.toString() })
  const stop2 = new AbortController()
  await new Promise<void>((resolve) => {
    void runBroker(ctxFor({ dev: true, port: '0', 'http-port': '0', host: '127.0.0.1' }, again), { signal: stop2.signal, logStream: new LogCapture(), onStarted: () => { resolve() } })
  })
  expect(text2).not.toContain('Created a development CA')
  stop2.abort()
})

test('bad flags and configs exit non-zero with one line', async () => {
  const err = new PassThrough()
  let e = ''
  err.on('data', (d: Buffer) => { e += d.toString() })
  expect(await main(['broker', '--port', 'abc'], { stdout: new PassThrough(), stderr: err, env: {} })).toBe(2)
  expect(e.trim().split('\n')).toHaveLength(1)
  expect(e).toMatch(/--port "abc"/)
  await fs.writeFile(path.join(dir, 'bad.yaml'), 'limits:\n  maxPacketBytes: -1\n')
  e = ''
  expect(await main(['broker', '--config', path.join(dir, 'bad.yaml')], { stdout: new PassThrough(), stderr: err, env: {} })).toBe(1)
  expect(e).toMatch(/limits\.maxPacketBytes -1/)
  e = ''
  expect(await main(['--home', path.join(dir, 'nowhere'), 'broker', '--port', '0', '--http-port', '0'], { stdout: new PassThrough(), stderr: err, env: {} })).toBe(1)
  expect(e.trim().split('\n')).toHaveLength(1)
})
