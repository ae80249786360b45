// MQTT 3.1.1 topic semantics: examples from the spec, then matches/covers/overlaps checked against brute force.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  covers, coversLevels, isValidTopicFilter, isValidTopicName, matches, matchLevels, overlaps, parseFilter,
  topicFilterProblem, topicNameProblem,
} from '../policies/topic.js'

describe('topic validation', () => {
  it.each([
    ['a/b', true], ['a/+/b', true], ['#', true], ['a/#', true], ['+', true], ['/', true], ['a//b', true],
    ['+/+', true], ['$SYS/#', true], ['/#', true],
    ['', false], ['a/#/b', false], ['a#', false], ['a/b#', false], ['a+', false], ['a/+b/c', false], ['##', false], ['a\0b', false],
  ])('filter %j valid: %s', (filter, ok) => {
    expect(isValidTopicFilter(filter)).toBe(ok)
  })

  it('names the problem', () => {
    expect(topicFilterProblem('a/#/b')).toBe("'#' must be the last level")
    expect(topicFilterProblem('a/b#')).toBe("'#' must fill a whole level")
    expect(topicFilterProblem('a+/b')).toBe("'+' must fill a whole level")
    expect(topicFilterProblem('')).toBe('topic filter is empty')
    expect(topicNameProblem('a/+')).toContain('wildcards')
    expect(topicNameProblem('x'.repeat(65_536))).toContain('65535 bytes')
    expect(topicNameProblem('a\uD800b')).toContain('surrogate')
  })

  it.each([['a/b', true], ['/', true], ['$SYS/x', true], ['', false], ['a/+', false], ['a/#', false], ['a\0', false]])('name %j valid: %s', (name, ok) => {
    expect(isValidTopicName(name)).toBe(ok)
  })
})

describe('matches', () => {
  it.each([
    ['sport/tennis/player1/#', 'sport/tennis/player1', true],
    ['sport/tennis/player1/#', 'sport/tennis/player1/ranking', true],
    ['sport/tennis/player1/#', 'sport/tennis/player1/score/wimbledon', true],
    ['sport/#', 'sport', true],
    ['#', 'anything/at/all', true],
    ['sport/tennis/+', 'sport/tennis/player1', true],
    ['sport/tennis/+', 'sport/tennis/player1/ranking', false],
    ['sport/+', 'sport', false],
    ['sport/+', 'sport/', true],
    ['+/+', '/finance', true],
    ['/+', '/finance', true],
    ['+', '/finance', false],
    ['a//b', 'a//b', true],
    ['a/+/b', 'a//b', true],
    ['a/b', 'a//b', false],
    ['#', '$SYS/x', false],
    ['+/monitor/Clients', '$SYS/monitor/Clients', false],
    ['$SYS/#', '$SYS/monitor/Clients', true],
    ['$SYS/monitor/+', '$SYS/monitor/Clients', true],
    ['$SYS/#', '$SYS', true],
    ['a/$x', 'a/$x', true],
    ['a/+', 'a/$x', true], // only the first level is special
    ['/#', '/', true],
  ])('%j matches %j: %s', (filter, topic, expected) => {
    expect(matches(filter, topic)).toBe(expected)
  })

  it('treats string levels as literals even when they hold wildcard characters', () => {
    expect(matchLevels(['devices', '+', 'x'], ['devices', 'other', 'x'], false)).toBe(false)
    expect(matchLevels(['devices', '#'], ['devices', 'a', 'b'], false)).toBe(false)
    expect(matchLevels(parseFilter('devices/+/x'), ['devices', 'other', 'x'], false)).toBe(true)
  })
})

describe('covers and overlaps', () => {
  it.each([
    ['devices/+/commands/#', 'devices/a/commands/#', true],
    ['devices/a/commands/#', 'devices/+/commands/#', false],
    ['devices/a/#', 'devices/a', true],
    ['devices/a/#', 'devices/a/#', true],
    ['devices/a/+/#', 'devices/a/#', false], // devices/a/# also matches devices/a
    ['#', '$SYS/#', false],
    ['+/#', '$SYS/x', false],
    ['#', '#', true],
    ['#', '+/+', true],
    ['+', '#', false],
    ['a/+', 'a/b', true],
    ['a/b', 'a/+', false],
    ['/+/#', '/#', true], // "/#" cannot match the empty topic, so it is exactly "/+/#"
    ['/+', '/#', false],
    ['+/#', '#', true], // a topic has at least one level, so "#" is exactly "+/#"
    ['+/+/#', '#', false],
  ])('covers(%j, %j) = %s', (allowed, requested, expected) => {
    expect(covers(allowed, requested)).toBe(expected)
  })

  it.each([
    ['devices/+/commands/firmware/#', 'devices/a/commands/#', true],
    ['devices/+/commands/firmware/#', 'devices/a/commands/reboot', false],
    ['devices/+/commands/firmware/#', 'devices/a/commands/+', true], // "devices/a/commands/firmware" itself
    ['#', '$SYS/x', false],
    ['$SYS/#', '#', false],
    ['+', '/#', false], // only the invalid empty topic would match both
    ['+/#', 'a', true],
    ['a/+', 'a', false],
    ['a/#', 'a', true],
  ])('overlaps(%j, %j) = %s', (f1, f2, expected) => {
    expect(overlaps(f1, f2)).toBe(expected)
    expect(overlaps(f2, f1)).toBe(expected)
  })
})

// Brute force: every topic of depth 1-5 over levels that include the filters' literals, a fresh
// literal, an empty level and two $-levels, so a counterexample always has a witness in the set.
const FILTER_LEVELS = ['a', 'b', '', '$x', '+']
const TOPIC_LEVELS = ['a', 'b', '', '$x', 'c', '$y']
const TOPICS: string[] = (() => {
  const out: string[] = []
  let layer: string[][] = [[]]
  for (let depth = 1; depth <= 5; depth++) {
    layer = layer.flatMap((t) => TOPIC_LEVELS.map((l) => [...t, l]))
    for (const t of layer) {
      const s = t.join('/')
      if (s !== '') out.push(s) // the empty string is not a topic name
    }
  }
  return out
})()

/** An independent reference: the filter as a regular expression over the topic string. */
function referenceRegExp (filter: string): RegExp {
  const levels = filter.split('/')
  const last = levels[levels.length - 1]
  const fixed = last === '#' ? levels.slice(0, -1) : levels
  const body = fixed.map((l) => l === '+' ? '[^/]*' : l.replace(/[$^.*+?()[\]{}|\\]/g, '\\$&')).join('/')
  const tail = last !== '#' ? '' : fixed.length === 0 ? '.*' : '(/.*)?'
  const noDollar = levels[0] === '+' || levels[0] === '#' ? '(?!\\$)' : ''
  return new RegExp(`^${noDollar}${body}${tail}$`, 's')
}

const filterArb = fc.tuple(fc.array(fc.constantFrom(...FILTER_LEVELS), { minLength: 0, maxLength: 4 }), fc.boolean())
  .map(([levels, hash]) => (hash ? [...levels.slice(0, 3), '#'] : levels).join('/'))
  .filter((f) => f !== '')
const topicArb = fc.array(fc.constantFrom(...TOPIC_LEVELS), { minLength: 1, maxLength: 5 })
  .map((l) => l.join('/')).filter((t) => t !== '')

describe('property: agrees with brute force', () => {
  it('generated filters are valid', () => {
    fc.assert(fc.property(filterArb, (f) => isValidTopicFilter(f)))
  })

  it('matches agrees with the regular-expression reference', () => {
    fc.assert(fc.property(filterArb, topicArb, (f, t) => matches(f, t) === referenceRegExp(f).test(t)), { numRuns: 5000 })
  })

  it('covers(A, R) holds exactly when every enumerated topic matched by R is matched by A', () => {
    fc.assert(fc.property(filterArb, filterArb, (a, r) => {
      const ra = referenceRegExp(a)
      const rr = referenceRegExp(r)
      const expected = TOPICS.every((t) => !rr.test(t) || ra.test(t))
      return covers(a, r) === expected
    }), { numRuns: 1500 })
  })

  it('overlaps(F1, F2) holds exactly when some enumerated topic is matched by both', () => {
    fc.assert(fc.property(filterArb, filterArb, (f1, f2) => {
      const r1 = referenceRegExp(f1)
      const r2 = referenceRegExp(f2)
      const expected = TOPICS.some((t) => r1.test(t) && r2.test(t))
      return overlaps(f1, f2) === expected && overlaps(f2, f1) === expected
    }), { numRuns: 1500 })
  })

  it('a filter covers itself, and covering implies overlapping', () => {
    fc.assert(fc.property(filterArb, filterArb, (a, r) => {
      if (!covers(a, a)) return false
      return !covers(a, r) || overlaps(a, r)
    }), { numRuns: 2000 })
  })

  it('exhaustively for all filters up to depth 3', () => {
    const filters: string[] = []
    let layer: string[][] = [[]]
    for (let depth = 1; depth <= 3; depth++) {
      layer = layer.flatMap((f) => FILTER_LEVELS.map((l) => [...f, l]))
      for (const f of layer) {
        filters.push(f.join('/'))
        if (depth < 3) filters.push([...f, '#'].join('/'))
      }
    }
    filters.push('#')
    const valid = [...new Set(filters)].filter((f) => f !== '')
    const sets = new Map(valid.map((f) => {
      const re = referenceRegExp(f)
      return [f, new Set(TOPICS.filter((t) => re.test(t)))]
    }))
    let checked = 0
    for (const a of valid) {
      for (const r of valid) {
        const sa = sets.get(a) as Set<string>
        const sr = sets.get(r) as Set<string>
        const cov = [...sr].every((t) => sa.has(t))
        const ov = [...sr].some((t) => sa.has(t))
        if (coversLevels(parseFilter(a), parseFilter(r)) !== cov) throw new Error(`covers(${JSON.stringify(a)}, ${JSON.stringify(r)}) should be ${cov}`)
        if (overlaps(a, r) !== ov) throw new Error(`overlaps(${JSON.stringify(a)}, ${JSON.stringify(r)}) should be ${ov}`)
        checked++
      }
    }
    expect(checked).toBeGreaterThan(10_000)
  })
})
