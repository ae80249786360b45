// `aedes-zt policy check` and `policy explain` through the CLI entry point, with captured output and exit codes.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { PassThrough } from 'node:stream'
import { afterAll, describe, expect, it } from 'vitest'
import { main } from '../cli/main.js'
import { shippedPoliciesDir } from '../policies/load.js'

async function run (...argv: string[]): Promise<{ code: number, out: string, err: string }> {
  const stdout = new PassThrough()
  const stderr = new PassThrough()
  let out = ''
  let err = ''
  stdout.on('data', (c: Buffer) => { out += c.toString() })
  stderr.on('data', (c: Buffer) => { err += c.toString() })
  const code = await main(argv, { stdout, stderr, env: {} })
  return { code, out, err }
}

const root = mkdtempSync(join(tmpdir(), 'zt-policy-cli-'))
afterAll(() => rmSync(root, { recursive: true, force: true }))

const fleet = join(root, 'fleet')
const bad = join(root, 'bad')
const empty = join(root, 'empty')
for (const d of [fleet, bad, empty]) mkdirSync(d)
writeFileSync(join(fleet, 'devices.yaml'), `
policies:
  - name: own
    principals: { kind: device }
    allow:
      publish: ["devices/\${id}/#"]
      subscribe: [{ topic: "devices/\${id}/commands/#", maxQos: 1 }]
  - name: broadcast
    principals: { kind: device }
    allow:
      subscribe: ["fleet/\${group}/broadcast"]
`)
writeFileSync(join(fleet, 'backend.json'), JSON.stringify({
  policies: [{ name: 'ingest', principals: { kind: 'service', groups: ['ingest'] }, allow: { subscribe: ['devices/+/telemetry'] }, deny: { subscribe: ['devices/secret/raw/#'] } }],
}))
writeFileSync(join(bad, 'a.yaml'), 'policies:\n  - name: x\n    allow: { publish: ["a/#/b", "${nope}"] }\n')
writeFileSync(join(bad, 'b.json'), '{"policies": [')

describe('policy check', () => {
  it('prints a summary and exits 0', async () => {
    expect(await run('policy', 'check', fleet)).toEqual({ code: 0, out: 'ok: 3 statements in 2 files\n', err: '' })
    expect((await run('policy', 'check', join(fleet, 'devices.yaml'))).out).toBe('ok: 2 statements in 1 file\n')
  })

  it('prints one line per error and exits 1', async () => {
    const r = await run('policy', 'check', bad)
    expect(r.code).toBe(1)
    expect(r.out).toBe('')
    expect(r.err.trim().split('\n')).toEqual([
      `${join(bad, 'a.yaml')}: statement "x": allow.publish[0]: "a/#/b": '#' must be the last level`,
      `${join(bad, 'a.yaml')}: statement "x": allow.publish[1]: "\${nope}": unknown variable "\${nope}"; variables are \${id}, \${kind}, \${group}, \${serial}`,
      expect.stringMatching(new RegExp(`^${join(bad, 'b.json').replace(/[.]/g, '\\.')}: invalid JSON: `)),
    ])
  })

  it('refuses an empty or missing directory', async () => {
    expect(await run('policy', 'check', empty)).toMatchObject({ code: 1, err: expect.stringContaining('no policy files') })
    expect(await run('policy', 'check', join(root, 'missing'))).toMatchObject({ code: 1, err: expect.stringContaining('no such file or directory') })
  })

  it('checks the shipped defaults', async () => {
    expect(await run('policy', 'check', shippedPoliciesDir())).toMatchObject({ code: 0, out: expect.stringMatching(/^ok: \d+ statements in 1 file\n$/) })
  })
})

describe('policy explain', () => {
  it('explains an allow with the statement and entry', async () => {
    const r = await run('policy', 'explain', 'sensor-1', '--policies', fleet, '--publish', 'devices/sensor-1/telemetry')
    expect(r.code).toBe(0)
    const lines = r.out.split('\n')
    expect(lines[0]).toBe('allow by statement "own" (allow.publish[0] "devices/${id}/#")')
    expect(r.out).toContain('statements: own, broadcast')
  })

  it('explains a deny and still exits 0', async () => {
    const r = await run('policy', 'explain', 'sensor-1', '--policies', fleet, '--publish', 'devices/sensor-2/telemetry')
    expect(r.code).toBe(0)
    expect(r.out.split('\n')[0]).toBe('deny: no statement allows it (default deny)')
  })

  it('handles groups, kinds, qos and subscribe containment, as JSON', async () => {
    const json = async (...args: string[]): Promise<Record<string, unknown>> => {
      const r = await run('policy', 'explain', ...args, '--policies', fleet, '--json')
      expect(r.code).toBe(0)
      return JSON.parse(r.out) as Record<string, unknown>
    }
    expect(await json('s1', '--kind', 'service', '--group', 'ingest', '--subscribe', 'devices/+/telemetry', '--qos', '1'))
      .toMatchObject({ effect: 'allow', statement: 'ingest', grantedQos: 1, identity: { id: 's1', kind: 'service', groups: ['ingest'] } })
    expect(await json('s1', '--kind', 'service', '--group', 'ingest', '--subscribe', 'devices/#'))
      .toMatchObject({ effect: 'deny', reason: 'denied', statement: 'ingest' })
    expect(await json('d1', '--group', 'north', '--group', 'south', '--subscribe', 'fleet/south/broadcast'))
      .toMatchObject({ effect: 'allow', statement: 'broadcast' })
    expect(await json('d1', '--subscribe', 'devices/d1/commands/#', '--qos', '2')).toMatchObject({ effect: 'allow', grantedQos: 1 })
    expect(await json('d1', '--receive', 'devices/d1/commands/x', '--retain')).toMatchObject({ effect: 'allow', request: { action: 'receive', retain: true } })
  })

  it('defaults to ./policies (here: the shipped folder)', async () => {
    const r = await run('policy', 'explain', 'sensor-1', '--publish', 'devices/sensor-1/telemetry')
    expect(r.out.split('\n')[0]).toMatch(/^allow by statement "device-own-topics"/)
  })

  it.each([
    [['policy', 'explain', 'd1', '--policies', fleet], 'exactly one of'],
    [['policy', 'explain', 'd1', '--policies', fleet, '--publish', 'a', '--subscribe', 'b'], 'exactly one of'],
    [['policy', 'explain', 'a/b', '--policies', fleet, '--publish', 'a'], "contains '/'"],
    [['policy', 'explain', 'd1', '--kind', 'robot', '--policies', fleet, '--publish', 'a'], 'kind "robot"'],
    [['policy', 'explain', 'd1', '--qos', '3', '--policies', fleet, '--publish', 'a'], '--qos "3" must be 0, 1 or 2'],
    [['policy', 'explain', 'd1', '--serial', 'xyz', '--policies', fleet, '--publish', 'a'], 'not hexadecimal'],
    [['policy', 'explain', '--policies', fleet, '--publish', 'a'], 'expected 1 argument'],
  ])('bad arguments exit 2: %j', async (argv, why) => {
    const r = await run(...argv)
    expect(r.code).toBe(2)
    expect(r.err).toContain(why)
    expect(r.err.trim().split('\n')).toHaveLength(1)
  })

  it('invalid policies exit 1 with the first problem', async () => {
    const r = await run('policy', 'explain', 'd1', '--policies', bad, '--publish', 'a')
    expect(r.code).toBe(1)
    expect(r.err).toContain("'#' must be the last level")
  })

  it('reports an invalid topic as a deny with the reason', async () => {
    const r = await run('policy', 'explain', 'd1', '--policies', fleet, '--publish', 'devices/d1/+')
    expect(r.code).toBe(0)
    expect(r.out.split('\n')[0]).toBe('deny: invalid request: a topic name cannot contain the wildcards + or #')
  })
})
