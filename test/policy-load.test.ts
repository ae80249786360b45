// Loader and validator: every rule refused with a one-line error naming file, statement and problem, in YAML and JSON.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { stringify } from 'yaml'
import { ZtError } from '../common/errors.js'
import { compileFor } from '../policies/engine.js'
import { loadPolicies, loadPoliciesSync, parsePolicies, parseTemplate, resolvePoliciesDir, shippedPoliciesDir } from '../policies/load.js'
import { HASH, PLUS } from '../policies/topic.js'

function errorsOf (fn: () => unknown): string[] {
  try {
    fn()
  } catch (err) {
    expect(err).toBeInstanceOf(ZtError)
    expect((err as ZtError).code).toBe('ZT_BAD_POLICY')
    expect((err as ZtError).message).not.toContain('\n')
    return (err as ZtError).context.errors as string[]
  }
  throw new Error('expected a ZT_BAD_POLICY error')
}

/** Runs the same document through the YAML and the JSON parser: the rules must not depend on the syntax. */
function bothErrors (doc: unknown): string[] {
  const fromYaml = errorsOf(() => parsePolicies(stringify(doc), 'policies/fleet.yaml'))
  const fromJson = errorsOf(() => parsePolicies(JSON.stringify(doc), 'policies/fleet.json'))
  expect(fromJson).toEqual(fromYaml.map((e) => e.replace('policies/fleet.yaml', 'policies/fleet.json')))
  return fromYaml
}

const stmt = (extra: Record<string, unknown>): unknown => ({ policies: [{ name: 'x', allow: { publish: ['a'] }, ...extra }] })

describe('validation rules', () => {
  it('formats errors as file: statement: path: topic: problem', () => {
    expect(bothErrors(stmt({ allow: { publish: ['ok', 'b', 'a/#/b'] } }))).toEqual([
      'policies/fleet.yaml: statement "x": allow.publish[2]: "a/#/b": \'#\' must be the last level',
    ])
  })

  it.each([
    ['unknown top-level key', { policies: [], extra: 1 }, 'policies/fleet.yaml: unknown key "extra" (expected "policies")'],
    ['missing policies', {}, 'missing "policies"'],
    ['policies not a list', { policies: {} }, '"policies" must be a list'],
    ['statement not a mapping', { policies: ['x'] }, 'statement policies[0]: must be a mapping'],
    ['unknown statement key', stmt({ effect: 'allow' }), 'statement "x": unknown key "effect"'],
    ['missing name', { policies: [{ allow: { publish: ['a'] } }] }, 'statement policies[0]: missing "name"'],
    ['bad name', { policies: [{ name: 'has space', allow: { publish: ['a'] } }] }, 'name "has space" must be'],
    ['no allow nor deny', { policies: [{ name: 'x' }] }, 'has neither "allow" nor "deny"'],
    ['unknown principal key', stmt({ principals: { id: 'a' } }), 'principals: unknown key "id"'],
    ['bad kind', stmt({ principals: { kind: 'robot' } }), 'principals.kind: "robot" is not one of device, service, operator'],
    ['bad kind in list', stmt({ principals: { kind: ['device', 'robot'] } }), 'principals.kind[1]: "robot"'],
    ['empty groups', stmt({ principals: { groups: [] } }), 'principals.groups must be a non-empty list'],
    ['groups not a list', stmt({ principals: { groups: 'sensors' } }), 'principals.groups must be a non-empty list'],
    ['bad group', stmt({ principals: { groups: ['a/b'] } }), 'principals.groups[0]: "a/b" is not a group name'],
    ['regex id', stmt({ principals: { ids: ['dev-[0-9]+'] } }), 'principals.ids[0]: "dev-[0-9]+" is not an id glob'],
    ['unknown action', stmt({ allow: { send: ['a'] } }), 'allow: unknown key "send" (expected publish, subscribe, receive)'],
    ['action not a list', stmt({ allow: { publish: 'a' } }), 'allow.publish must be a list of topics'],
    ['allow not a mapping', stmt({ allow: ['a'] }), 'allow must be a mapping'],
    ['entry unknown key', stmt({ allow: { publish: [{ topic: 'a', qos: 1 }] } }), 'allow.publish[0]: unknown key "qos" (expected topic, retain, maxQos)'],
    ['entry without topic', stmt({ allow: { publish: [{ retain: true }] } }), 'allow.publish[0]: missing "topic"'],
    ['entry not a topic', stmt({ allow: { publish: [3] } }), 'allow.publish[0]: 3 is not a topic'],
    ['bad retain', stmt({ allow: { publish: [{ topic: 'a', retain: 'no' }] } }), 'retain must be true or false, not "no"'],
    ['bad maxQos', stmt({ allow: { publish: [{ topic: 'a', maxQos: 3 }] } }), 'maxQos must be 0, 1 or 2, not 3'],
    ['maxQos on deny', stmt({ deny: { publish: [{ topic: 'a', maxQos: 1 }] } }), 'deny.publish[0]: maxQos applies only to allow entries'],
    ['empty topic', stmt({ allow: { subscribe: [''] } }), 'allow.subscribe[0]: "": topic filter is empty'],
    ['partial +', stmt({ allow: { subscribe: ['a/b+'] } }), '"a/b+": \'+\' must fill a whole level'],
    ['partial #', stmt({ deny: { receive: ['a/b#'] } }), 'deny.receive[0]: "a/b#": \'#\' must fill a whole level'],
    ['unknown variable', stmt({ allow: { publish: ['devices/${foo}/x'] } }), '"devices/${foo}/x": unknown variable "${foo}"; variables are ${id}, ${kind}, ${group}, ${serial}'],
    ['unterminated variable', stmt({ allow: { publish: ['devices/${id/x'] } }), '"devices/${id/x": unterminated "${"'],
    ['partial-level variable', stmt({ allow: { publish: ['devices/x${id}'] } }), 'a variable must fill a whole level'],
    ['two variables in a level', stmt({ allow: { publish: ['devices/${id}${kind}'] } }), 'a variable must fill a whole level'],
    ['variable then # misplaced', stmt({ allow: { publish: ['${id}/#/x'] } }), "'#' must be the last level"],
  ])('%s', (_, doc, expected) => {
    const errors = bothErrors(doc)
    expect(errors).toHaveLength(1)
    expect(errors[0]).toContain(expected)
    expect(errors[0]).toMatch(/^policies\/fleet\.yaml: /)
  })

  it('reports every problem, the first in the message', () => {
    let caught: unknown
    try {
      parsePolicies(stringify({ policies: [{ name: 'a', allow: { publish: ['#/x'] } }, { name: 'b', deny: { subscribe: ['${x}'] } }] }), 'f.yaml')
    } catch (err) { caught = err }
    expect((caught as ZtError).message).toBe('f.yaml: statement "a": allow.publish[0]: "#/x": \'#\' must be the last level (and 1 more)')
    expect((caught as ZtError).context.errors).toHaveLength(2)
  })

  it('refuses duplicate names within a file', () => {
    expect(bothErrors({ policies: [{ name: 'x', allow: { publish: ['a'] } }, { name: 'x', allow: { publish: ['b'] } }] }))
      .toEqual(['policies/fleet.yaml: statement "x": name already used earlier in this file'])
  })

  it('refuses syntax errors and duplicate keys with one line', () => {
    expect(errorsOf(() => parsePolicies('policies:\n  - name: a\n    name: b\n', 'p.yaml'))[0]).toBe('p.yaml: invalid YAML: Map keys must be unique at line 3, column 5')
    expect(errorsOf(() => parsePolicies('{"policies": [}', 'p.json'))[0]).toMatch(/^p\.json: invalid JSON: /)
    expect(errorsOf(() => parsePolicies('', 'p.yaml'))[0]).toBe('p.yaml: is empty; expected a mapping with a "policies" list')
  })

  it('accepts the full language', () => {
    const set = parsePolicies(`
policies:
  - name: full
    description: every feature at once
    principals: { kind: [device, service], groups: [a, b], ids: ["dev-*", "gw?"] }
    allow:
      publish: ["devices/\${id}/#", { topic: "x/\${kind}/\${serial}", retain: false, maxQos: 1 }]
      subscribe: ["fleet/\${group}/+"]
      receive: []
    deny:
      publish: [{ topic: "devices/\${id}/secret", retain: true }]
  - name: empty-ok
    principals: {}
    allow: {}
`, 'ok.yaml')
    expect(set.statements.map((s) => s.name)).toEqual(['full', 'empty-ok'])
    const full = set.statements[0]
    expect(full?.description).toBe('every feature at once')
    expect(full?.allow.receive).toEqual([]) // an explicit empty receive list is not defaulted
    expect(full?.allow.publish[1]).toMatchObject({ retain: false, maxQos: 1, label: 'allow.publish[1]' })
  })

  it('defaults receive to subscribe, for allow and deny', () => {
    const set = parsePolicies('policies: [{ name: a, allow: { subscribe: ["x/#"] }, deny: { subscribe: ["x/y"] } }]', 'd.yaml')
    const s = set.statements[0]
    expect(s?.allow.receive).toBe(s?.allow.subscribe)
    expect(s?.deny.receive).toBe(s?.deny.subscribe)
  })

  it('parses templates into literal, wildcard and variable levels', () => {
    expect(parseTemplate('devices/${id}/+/#')).toEqual({ levels: ['devices', { variable: 'id' }, PLUS, HASH] })
    expect(parseTemplate('$SYS/x')).toEqual({ levels: ['$SYS', 'x'] })
    expect(parseTemplate('a/$id')).toEqual({ levels: ['a', '$id'] }) // no braces: a literal
  })
})

describe('directories', () => {
  const root = mkdtempSync(join(tmpdir(), 'zt-policies-'))
  afterAll(() => rmSync(root, { recursive: true, force: true }))
  const dir = (name: string, files: Record<string, string>): string => {
    const d = join(root, name)
    mkdirSync(d, { recursive: true })
    for (const [f, text] of Object.entries(files)) writeFileSync(join(d, f), text)
    return d
  }

  it('loads *.yaml, *.yml, *.json in name order and ignores everything else', async () => {
    const d = dir('mixed', {
      'b.yml': 'policies: [{ name: b, allow: { publish: [b] } }]',
      'a.json': JSON.stringify({ policies: [{ name: 'a', allow: { publish: ['a'] } }] }),
      'c.yaml': 'policies: [{ name: c, allow: { publish: [c] } }]',
      'engine.ts': 'not policy',
      'notes.txt': 'not policy',
      '.#c.yaml': 'lock file: not policy',
    })
    mkdirSync(join(d, 'sub.yaml'))
    writeFileSync(join(d, 'sub.yaml', 'x.yaml'), 'policies: [{ name: nested, allow: { publish: [x] } }]')
    const set = await loadPolicies(d)
    expect(set.statements.map((s) => s.name)).toEqual(['a', 'b', 'c'])
    expect(set.files).toEqual(['a.json', 'b.yml', 'c.yaml'].map((f) => join(d, f)))
    expect(loadPoliciesSync(d).digest).toBe(set.digest)
  })

  it('follows symlinked files (Kubernetes ConfigMaps)', async () => {
    const target = dir('target', { 'real.yaml': 'policies: [{ name: linked, allow: { publish: [l] } }]' })
    const d = dir('linked', {})
    symlinkSync(join(target, 'real.yaml'), join(d, 'p.yaml'))
    expect((await loadPolicies(d)).statements.map((s) => s.name)).toEqual(['linked'])
  })

  it('refuses a name used in two files, naming both', async () => {
    const d = dir('dup', {
      'a.yaml': 'policies: [{ name: same, allow: { publish: [a] } }]',
      'b.yaml': 'policies: [{ name: same, allow: { publish: [b] } }]',
    })
    await expect(loadPolicies(d)).rejects.toThrow(`${join(d, 'b.yaml')}: statement "same": name already used in ${join(d, 'a.yaml')}`)
  })

  it('an empty directory is an empty set; a missing one is an error', async () => {
    expect((await loadPolicies(dir('empty', {}))).files).toEqual([])
    await expect(loadPolicies(join(root, 'nope'))).rejects.toMatchObject({ code: 'ZT_IO' })
    expect(() => loadPoliciesSync(join(root, 'nope'))).toThrow(/no such file or directory/)
  })

  it('loads a single file, and refuses other extensions', async () => {
    const d = dir('single', { 'one.yaml': 'policies: [{ name: one, allow: { publish: [o] } }]', 'x.txt': '' })
    expect((await loadPolicies(join(d, 'one.yaml'))).statements).toHaveLength(1)
    await expect(loadPolicies(join(d, 'x.txt'))).rejects.toThrow(/not a policy file/)
  })

  it('parses large YAML off the main thread with the same result', async () => {
    const lines = ['policies:']
    for (let i = 0; i < 3000; i++) lines.push(`  - { name: dev-${i}, principals: { ids: [dev-${i}] }, allow: { publish: ["devices/\${id}/n/${i}"] } }`)
    const d = dir('large', { 'big.yaml': lines.join('\n') })
    const set = await loadPolicies(d)
    expect(set.statements).toHaveLength(3000)
    expect(set.digest).toBe(loadPoliciesSync(d).digest)
    expect(compileFor(set, { id: 'dev-42', kind: 'device', groups: [] }).publish('devices/dev-42/n/42').effect).toBe('allow')
    writeFileSync(join(d, 'big.yaml'), lines.join('\n') + '\n  - { name: bad, allow: { publish: ["a/#/b"] } }\n    oops: [')
    await expect(loadPolicies(d)).rejects.toThrow(/big\.yaml: invalid YAML: /)
  })

  it('resolves ./policies of the working directory, else the shipped defaults', () => {
    const cwd = dir('cwd-with', {})
    mkdirSync(join(cwd, 'policies'))
    expect(resolvePoliciesDir(undefined, cwd)).toBe(join(cwd, 'policies'))
    expect(resolvePoliciesDir(undefined, dir('cwd-without', {}))).toBe(shippedPoliciesDir())
    expect(resolvePoliciesDir('explicit', cwd)).toBe('explicit')
  })
})
