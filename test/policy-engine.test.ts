// Evaluation rules: principals, deny wins, default deny, literal variables, ${group}, conditions, $-topics, reloads.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { compileFor, describeDecision, explain, substitute } from '../policies/engine.js'
import { coversLevels, HASH, matchLevels, parseFilter } from '../policies/topic.js'
import { loadPoliciesSync, parsePolicies, shippedPoliciesDir } from '../policies/load.js'
import type { Identity } from '../policies/model.js'
import type { PolicySet } from '../policies/set.js'
import { ZtError } from '../common/errors.js'

const device = (id: string, groups: string[] = [], serial = 'abc123'): Identity => ({ id, kind: 'device', groups, serial })
const service = (id: string, groups: string[] = []): Identity => ({ id, kind: 'service', groups, serial: '01' })

function set (yaml: string): PolicySet {
  return parsePolicies(yaml, 'test.yaml')
}

describe('principals', () => {
  const policies = set(`
policies:
  - name: everyone
    allow: { publish: [public/#] }
  - name: devices-only
    principals: { kind: device }
    allow: { publish: [kind/device] }
  - name: kinds-list
    principals: { kind: [device, service] }
    allow: { publish: [kind/any] }
  - name: sensors
    principals: { groups: [sensors, meters] }
    allow: { publish: [group/sensors] }
  - name: sensor-devices
    principals: { kind: device, groups: [sensors] }
    allow: { publish: [both] }
  - name: globbed
    principals: { ids: ["lab-*", "test-??"] }
    allow: { publish: [glob] }
  - name: exact
    principals: { ids: [gw.1] }
    allow: { publish: [exact] }
`)
  const can = (who: Identity, topic: string): boolean => compileFor(policies, who).publish(topic).effect === 'allow'

  it('omitted principals match everyone', () => {
    expect(can(device('x'), 'public/a')).toBe(true)
    expect(can(service('y'), 'public/a')).toBe(true)
  })

  it('kind, kind lists and groups', () => {
    expect(can(device('x'), 'kind/device')).toBe(true)
    expect(can(service('x'), 'kind/device')).toBe(false)
    expect(can(service('x'), 'kind/any')).toBe(true)
    expect(can(device('x', ['meters']), 'group/sensors')).toBe(true)
    expect(can(device('x', ['other']), 'group/sensors')).toBe(false)
    expect(can(device('x'), 'group/sensors')).toBe(false)
  })

  it('every given field must match', () => {
    expect(can(device('x', ['sensors']), 'both')).toBe(true)
    expect(can(service('x', ['sensors']), 'both')).toBe(false)
    expect(can(device('x', ['meters']), 'both')).toBe(false)
  })

  it('ids are globs with * and ?, not regular expressions', () => {
    expect(can(device('lab-1'), 'glob')).toBe(true)
    expect(can(device('lab-'), 'glob')).toBe(true)
    expect(can(device('test-ab'), 'glob')).toBe(true)
    expect(can(device('test-abc'), 'glob')).toBe(false)
    expect(can(device('xlab-1'), 'glob')).toBe(false)
    expect(can(device('gw.1'), 'exact')).toBe(true)
    expect(can(device('gwx1'), 'exact')).toBe(false) // '.' is a literal dot
  })

  it('lists the statements that apply, in order', () => {
    expect(compileFor(policies, device('lab-1', ['sensors'])).statements).toEqual(['everyone', 'devices-only', 'kinds-list', 'sensors', 'sensor-devices', 'globbed'])
  })
})

describe('decisions', () => {
  const policies = set(`
policies:
  - name: own
    principals: { kind: device }
    allow:
      publish: ["devices/\${id}/#"]
      subscribe: ["devices/\${id}/#"]
  - name: no-firmware
    principals: { kind: device }
    deny:
      publish: ["devices/+/firmware/#"]
      subscribe: ["devices/+/firmware/#"]
`)

  it('allows what a statement allows and names it', () => {
    const d = compileFor(policies, device('d1')).publish('devices/d1/telemetry')
    expect(d).toEqual({ effect: 'allow', reason: 'allowed', statement: 'own', entry: 'allow.publish[0] "devices/${id}/#"' })
    expect(describeDecision(d)).toBe('allow by statement "own" (allow.publish[0] "devices/${id}/#")')
  })

  it('deny wins over allow, across statements', () => {
    const d = compileFor(policies, device('d1')).publish('devices/d1/firmware/v2')
    expect(d).toMatchObject({ effect: 'deny', reason: 'denied', statement: 'no-firmware', entry: 'deny.publish[0] "devices/+/firmware/#"' })
  })

  it('default deny when nothing matches, with no statement', () => {
    const d = compileFor(policies, device('d1')).publish('devices/d2/telemetry')
    expect(d).toEqual({ effect: 'deny', reason: 'no-match' })
    expect(compileFor(set('policies: []'), device('d1')).publish('a')).toEqual({ effect: 'deny', reason: 'no-match' })
  })

  it('a trailing # also matches its parent level', () => {
    expect(compileFor(policies, device('d1')).publish('devices/d1').effect).toBe('allow')
  })

  it('subscribe needs one allowed filter covering the request and no denied filter overlapping it', () => {
    const a = compileFor(policies, device('d1'))
    expect(a.subscribe('devices/d1/commands/#')).toMatchObject({ effect: 'allow', grantedQos: 0 })
    expect(a.subscribe('devices/d1/telemetry', { qos: 2 })).toMatchObject({ effect: 'allow', grantedQos: 2 })
    // devices/d1/+ would also receive devices/d1/firmware, which is denied.
    expect(a.subscribe('devices/d1/+')).toMatchObject({ effect: 'deny', reason: 'denied' })
    expect(a.subscribe('devices/+/commands/#')).toMatchObject({ effect: 'deny', reason: 'no-match' })
    expect(a.subscribe('#')).toMatchObject({ effect: 'deny' })
    // devices/d1/# overlaps the denied devices/+/firmware/# (at devices/d1/firmware/...).
    expect(a.subscribe('devices/d1/#')).toMatchObject({ effect: 'deny', reason: 'denied', statement: 'no-firmware' })
  })

  it('rejects invalid topics and filters without consulting statements', () => {
    const a = compileFor(policies, device('d1'))
    expect(a.publish('devices/d1/+')).toMatchObject({ effect: 'deny', reason: 'invalid' })
    expect(a.publish('')).toMatchObject({ effect: 'deny', reason: 'invalid' })
    expect(a.subscribe('devices/d1/#/x')).toMatchObject({ effect: 'deny', reason: 'invalid', detail: "'#' must be the last level" })
  })
})

describe('variables', () => {
  const policies = set(`
policies:
  - name: vars
    allow:
      publish:
        - "devices/\${id}/x"
        - "kinds/\${kind}/\${id}"
        - "fleet/\${group}/broadcast"
        - "certs/\${serial}"
      subscribe: ["fleet/\${group}/broadcast"]
`)

  it('substitutes id, kind, serial', () => {
    const a = compileFor(policies, device('d1', [], 'ff01'))
    expect(a.publish('devices/d1/x').effect).toBe('allow')
    expect(a.publish('kinds/device/d1').effect).toBe('allow')
    expect(a.publish('kinds/service/d1').effect).toBe('deny')
    expect(a.publish('certs/ff01').effect).toBe('allow')
    expect(a.publish('certs/ff02').effect).toBe('deny')
  })

  it('${group} expands once per group, and vanishes without groups', () => {
    const a = compileFor(policies, device('d1', ['north', 'south']))
    expect(a.publish('fleet/north/broadcast').effect).toBe('allow')
    expect(a.publish('fleet/south/broadcast').effect).toBe('allow')
    expect(a.publish('fleet/east/broadcast').effect).toBe('deny')
    expect(a.subscribe('fleet/north/broadcast').effect).toBe('allow')
    expect(a.subscribe('fleet/+/broadcast').effect).toBe('deny')
    const none = compileFor(policies, device('d1', []))
    expect(none.publish('fleet//broadcast').effect).toBe('deny')
    expect(none.subscribe('fleet/+/broadcast').effect).toBe('deny')
  })

  it('entries using ${serial} vanish when the identity has no serial', () => {
    const a = compileFor(policies, { id: 'd1', kind: 'device', groups: [] })
    expect(a.publish('certs/').effect).toBe('deny')
    expect(a.publish('devices/d1/x').effect).toBe('allow')
  })

  it('substituted values are literals, never wildcards', () => {
    // The id alphabet keeps + # / out of certificates (compileFor refuses them); the substitution is safe anyway.
    const raw = set('policies: [{ name: own, allow: { publish: ["devices/${id}/x"], subscribe: ["devices/${id}/#"] } }]')
    expect(() => compileFor(raw, device('+'))).toThrow(ZtError)
    const entry = raw.statements[0]?.allow.subscribe[0]
    if (entry === undefined) throw new Error('no entry')
    for (const evil of ['+', '#', 'a/b']) {
      const [levels] = substitute(entry, { id: evil, kind: 'device', groups: [] })
      expect(levels).toEqual(['devices', evil, HASH])
      expect(matchLevels(levels ?? [], ['devices', 'victim', 'x'], false)).toBe(false)
      expect(coversLevels(levels ?? [], parseFilter('devices/+/#'))).toBe(false)
    }
  })
})

describe('conditions', () => {
  const policies = set(`
policies:
  - name: state
    principals: { kind: device }
    allow:
      publish:
        - { topic: "devices/\${id}/state", retain: true }
        - { topic: "devices/\${id}/telemetry", retain: false, maxQos: 1 }
      subscribe:
        - { topic: "devices/\${id}/commands/#", maxQos: 1 }
        - { topic: "news/#", retain: false }
  - name: no-retained-alarms
    deny:
      publish: [{ topic: "devices/+/alarms", retain: true }]
  - name: alarms
    allow:
      publish: ["devices/+/alarms"]
`)

  it('retain narrows an entry to retained or non-retained messages', () => {
    const a = compileFor(policies, device('d1'))
    expect(a.publish('devices/d1/state', { retain: true }).effect).toBe('allow')
    expect(a.publish('devices/d1/state', { retain: false })).toMatchObject({ effect: 'deny', reason: 'condition', statement: 'state' })
    expect(a.publish('devices/d1/telemetry', { retain: true })).toMatchObject({ effect: 'deny', reason: 'condition' })
    expect(a.publish('devices/d1/telemetry', { retain: false }).effect).toBe('allow')
  })

  it('a deny with retain applies only to matching messages', () => {
    const a = compileFor(policies, device('d1'))
    expect(a.publish('devices/d1/alarms', { retain: true })).toMatchObject({ effect: 'deny', reason: 'denied', statement: 'no-retained-alarms' })
    expect(a.publish('devices/d1/alarms', { retain: false })).toMatchObject({ effect: 'allow', statement: 'alarms' })
  })

  it('publish above maxQos is denied', () => {
    const a = compileFor(policies, device('d1'))
    expect(a.publish('devices/d1/telemetry', { qos: 1 }).effect).toBe('allow')
    expect(a.publish('devices/d1/telemetry', { qos: 2 })).toMatchObject({ effect: 'deny', reason: 'condition', statement: 'state' })
  })

  it('subscribe above maxQos is granted at maxQos', () => {
    const a = compileFor(policies, device('d1'))
    expect(a.subscribe('devices/d1/commands/#', { qos: 2 })).toMatchObject({ effect: 'allow', grantedQos: 1 })
    expect(a.subscribe('devices/d1/commands/#', { qos: 0 })).toMatchObject({ effect: 'allow', grantedQos: 0 })
  })

  it('receive defaults to the subscribe list, conditions included', () => {
    const a = compileFor(policies, device('d1'))
    expect(a.receive('devices/d1/commands/reboot', { qos: 2 })).toMatchObject({ effect: 'allow', grantedQos: 1, entry: 'allow.subscribe[0] "devices/${id}/commands/#"' })
    expect(a.subscribe('news/#').effect).toBe('allow') // retain is about messages, not about the SUBSCRIBE
    expect(a.receive('news/today', { retain: false }).effect).toBe('allow')
    expect(a.receive('news/today', { retain: true })).toMatchObject({ effect: 'deny', reason: 'condition' })
    expect(a.receive('devices/d2/commands/reboot').effect).toBe('deny')
  })
})

describe('receive', () => {
  it('explicit receive replaces the default; deny.receive defaults to deny.subscribe', () => {
    const policies = set(`
policies:
  - name: s
    allow:
      subscribe: ["a/#", "b/#"]
      receive: ["a/#"]
    deny:
      subscribe: ["a/secret/#"]
`)
    const a = compileFor(policies, device('d1'))
    expect(a.receive('a/x').effect).toBe('allow')
    expect(a.receive('b/x').effect).toBe('deny')
    expect(a.receive('a/secret/x')).toMatchObject({ effect: 'deny', reason: 'denied', entry: 'deny.subscribe[0] "a/secret/#"' })
  })
})

describe('$-topics', () => {
  const policies = set(`
policies:
  - name: broad
    allow:
      publish: ["#"]
      subscribe: ["#", "+/#"]
  - name: sys-for-ops
    principals: { groups: [ops] }
    allow:
      subscribe: ["$SYS/broker/#"]
`)

  it('are never granted by a leading wildcard', () => {
    const a = compileFor(policies, device('d1'))
    expect(a.publish('$SYS/x').effect).toBe('deny')
    expect(a.subscribe('$SYS/#').effect).toBe('deny')
    expect(a.subscribe('$SYS/broker/load').effect).toBe('deny')
    expect(a.receive('$SYS/broker/load').effect).toBe('deny')
    expect(a.receive('$x').effect).toBe('deny')
    expect(a.receive('anything/else').effect).toBe('allow')
  })

  it('need an explicit statement', () => {
    const a = compileFor(policies, device('d1', ['ops']))
    expect(a.subscribe('$SYS/broker/#').effect).toBe('allow')
    expect(a.receive('$SYS/broker/load')).toMatchObject({ effect: 'allow', statement: 'sys-for-ops' })
    expect(a.receive('$SYS/other').effect).toBe('deny')
  })

  it('are never publishable, even by a statement that names them: Aedes acts on $SYS messages', () => {
    const writer = set(`
policies:
  - name: sys-writer
    allow:
      publish: ["$SYS/#", "$x/#"]
`)
    const a = compileFor(writer, device('d1'))
    expect(a.publish('$SYS/node-1/new/clients')).toMatchObject({ effect: 'deny', reason: 'sys-reserved' })
    expect(a.publish('$SYS')).toMatchObject({ effect: 'deny', reason: 'sys-reserved' })
    expect(a.publish('$x/y')).toMatchObject({ effect: 'allow', statement: 'sys-writer' })
    expect(describeDecision(a.publish('$SYS/a'))).toMatch(/\$SYS/)
  })
})

describe('generations and caching', () => {
  const v1 = set('policies: [{ name: a, allow: { publish: ["x"] } }]')
  const v2 = set('policies: [{ name: b, allow: { publish: ["y"] } }]')

  it('each set has a new generation', () => {
    expect(v2.generation).toBeGreaterThan(v1.generation)
  })

  it('an authorizer recompiles when its source changes set', () => {
    let current = v1
    const a = compileFor({ current: () => current }, device('d1'))
    expect(a.publish('x').effect).toBe('allow')
    expect(a.generation).toBe(v1.generation)
    current = v2
    expect(a.publish('x').effect).toBe('deny') // the cached allow must not survive the reload
    expect(a.publish('y')).toMatchObject({ effect: 'allow', statement: 'b' })
    expect(a.generation).toBe(v2.generation)
    expect(a.statements).toEqual(['b'])
  })

  it('caches per qos and retain, and stays correct past the cache size', () => {
    const policies = set('policies: [{ name: a, allow: { publish: [{ topic: "t/#", maxQos: 1 }] } }]')
    const a = compileFor(policies, device('d1'), { cacheSize: 4 })
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 10; i++) {
        expect(a.publish(`t/${i}`, { qos: 1 }).effect).toBe('allow')
        expect(a.publish(`t/${i}`, { qos: 2 }).effect).toBe('deny')
        expect(a.publish(`u/${i}`, { qos: 0 }).effect).toBe('deny')
      }
    }
    const same = a.publish('t/1', { qos: 1 })
    expect(a.publish('t/1', { qos: 1 })).toBe(same)
  })

  it('answers from the cache exactly what it answers uncached, whatever the order of requests', () => {
    const conditional = set(`
policies:
  - name: c
    allow:
      publish: [{ topic: "t/#", maxQos: 1 }, { topic: "t/r", retain: true }, "u/+"]
      subscribe: [{ topic: "t/#", maxQos: 1 }, "u/#"]
      receive: [{ topic: "t/#", maxQos: 1 }, "u/+"]
    deny:
      publish: [{ topic: "u/r", retain: true }]
      receive: [{ topic: "t/x", retain: false }]
`)
    const plain = set('policies: [{ name: p, allow: { publish: ["t/#"], subscribe: ["t/+"], receive: ["t/#"] }, deny: { publish: ["t/x"] } }]')
    const request = fc.record({
      action: fc.constantFrom('publish' as const, 'receive' as const, 'subscribe' as const),
      topic: fc.constantFrom('t/a', 't/r', 't/x', 'u/r', 'u/a', 'u/#', 't/+', 'v', 't/#', '', 'a\u0000b'),
      qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
      retain: fc.boolean(),
    })
    for (const policies of [conditional, plain]) {
      fc.assert(fc.property(fc.array(request, { maxLength: 40 }), fc.integer({ min: 1, max: 5 }), (requests, cacheSize) => {
        const cached = compileFor(policies, device('d1'), { cacheSize })
        const fresh = compileFor(policies, device('d1'), { cacheSize: 0 })
        for (const r of requests) {
          const got = r.action === 'subscribe' ? cached.subscribe(r.topic, { qos: r.qos }) : cached[r.action](r.topic, { qos: r.qos, retain: r.retain })
          const want = r.action === 'subscribe' ? fresh.subscribe(r.topic, { qos: r.qos }) : fresh[r.action](r.topic, { qos: r.qos, retain: r.retain })
          expect(got).toEqual(want)
        }
      }), { numRuns: 300 })
    }
  })
})

describe('identity checks and explain', () => {
  const policies = set('policies: [{ name: a, allow: { publish: ["x"] } }]')

  it('refuses identities outside the id alphabet', () => {
    expect(() => compileFor(policies, device('a/b'))).toThrow(/id "a\/b" contains '\/'/)
    expect(() => compileFor(policies, device('a', ['bad group']))).toThrow(ZtError)
    expect(() => compileFor(policies, { id: 'a', kind: 'robot' as 'device', groups: [] })).toThrow(ZtError)
  })

  it('explain returns the decision and the statements in play', () => {
    expect(explain(policies, device('d1'), { action: 'publish', topic: 'x' })).toEqual({
      decision: { effect: 'allow', reason: 'allowed', statement: 'a', entry: 'allow.publish[0] "x"' },
      statements: ['a'],
    })
    expect(explain(policies, device('d1'), { action: 'subscribe', filter: 'x', qos: 1 }).decision).toEqual({ effect: 'deny', reason: 'no-match' })
  })
})

describe('index with many statements', () => {
  it('finds the right statements among thousands, by id, group, kind and glob', () => {
    const lines = ['policies:']
    for (let i = 0; i < 3000; i++) {
      lines.push(`  - { name: dev-${i}, principals: { ids: [dev-${i}] }, allow: { publish: ["d/${i}"] } }`)
      lines.push(`  - { name: grp-${i}, principals: { groups: [g${i}], kind: device }, allow: { publish: ["g/${i}"] } }`)
    }
    lines.push('  - { name: glob, principals: { ids: ["dev-1*"], groups: [g5] }, allow: { publish: ["glob"] } }')
    lines.push('  - { name: kind, principals: { kind: service }, allow: { publish: ["svc"] } }')
    const policies = set(lines.join('\n'))
    const a = compileFor(policies, device('dev-17', ['g5', 'g2999']))
    expect(a.statements).toEqual(['grp-5', 'dev-17', 'grp-2999', 'glob']) // file order, not bucket order
    expect(a.publish('d/17').effect).toBe('allow')
    expect(a.publish('d/18').effect).toBe('deny')
    expect(a.publish('g/2999').effect).toBe('allow')
    expect(compileFor(policies, service('dev-17', ['g5'])).statements).toEqual(['dev-17', 'glob', 'kind'])
    expect(compileFor(policies, service('dev-17', ['g6'])).statements).toEqual(['dev-17', 'kind'])
  })
})

describe('shipped defaults', () => {
  const defaults = loadPoliciesSync(shippedPoliciesDir())

  it('load, and are only the yaml file of the policies folder', () => {
    expect(defaults.files.map((f) => f.replace(/.*\//, ''))).toEqual(['default.yaml'])
  })

  it('let devices own devices/${id}/# and nothing else', () => {
    const a = compileFor(defaults, device('sensor-001'))
    expect(a.publish('devices/sensor-001/telemetry').effect).toBe('allow')
    expect(a.subscribe('devices/sensor-001/commands/#').effect).toBe('allow')
    expect(a.receive('devices/sensor-001/commands/reboot').effect).toBe('allow')
    expect(a.publish('devices/sensor-002/telemetry').effect).toBe('deny')
    expect(a.subscribe('devices/+/telemetry').effect).toBe('deny')
    expect(a.subscribe('#').effect).toBe('deny')
  })

  it('let ingest services read telemetry and command services send commands', () => {
    const ingest = compileFor(defaults, service('ingest-1', ['ingest']))
    expect(ingest.subscribe('devices/+/telemetry').effect).toBe('allow')
    expect(ingest.receive('devices/x/telemetry').effect).toBe('allow')
    expect(ingest.publish('devices/x/commands/reboot').effect).toBe('deny')
    const cmd = compileFor(defaults, service('cmd-1', ['commands']))
    expect(cmd.publish('devices/x/commands/reboot', { qos: 1 }).effect).toBe('allow')
    expect(cmd.publish('devices/x/commands/firmware/v2').effect).toBe('deny')
    expect(cmd.subscribe('devices/+/telemetry').effect).toBe('deny')
  })

  it('grant neither $SYS nor # to anyone', () => {
    for (const who of [device('d', ['ingest', 'commands', 'bridge', 'firmware']), service('s', ['ingest', 'commands', 'bridge', 'firmware'])]) {
      const a = compileFor(defaults, who)
      expect(a.subscribe('#').effect).toBe('deny')
      expect(a.subscribe('$SYS/#').effect).toBe('deny')
      expect(a.receive('$SYS/broker/uptime').effect).toBe('deny')
      expect(a.publish('$SYS/x').effect).toBe('deny')
    }
  })
})

describe('compile failures', () => {
  it('a policy source that cannot compile for an identity denies every question instead of throwing', () => {
    const broken = { current: () => ({ generation: 7, statementsFor: () => { throw new Error('broken set') } }) } as unknown as PolicySet
    const a = compileFor(broken, { id: 'd1', kind: 'device', groups: [] })
    expect(a.publish('devices/d1/telemetry')).toMatchObject({ effect: 'deny' })
    expect(a.subscribe('devices/d1/#')).toMatchObject({ effect: 'deny' })
    expect(a.receive('devices/d1/telemetry')).toMatchObject({ effect: 'deny' })
  })
})
