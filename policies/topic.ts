// MQTT 3.1.1 topic names and filters (section 4.7): validation, matching, containment and overlap.

/** `+` in a parsed filter: exactly one level, which may be empty. */
export const PLUS: unique symbol = Symbol('+')
/** `#` in a parsed filter: zero or more trailing levels (so `a/#` also matches `a`). */
export const HASH: unique symbol = Symbol('#')

/**
 * One level of a parsed filter. A string is always a literal, whatever characters it holds: that is how
 * values substituted into policy templates stay literal (a `+` that came from a variable is a string,
 * never the PLUS wildcard).
 */
export type FilterLevel = string | typeof PLUS | typeof HASH
export type FilterLevels = readonly FilterLevel[]

/** The spec caps a topic at 65 535 bytes of UTF-8 (section 1.5.3). */
const MAX_TOPIC_BYTES = 65_535
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

function checkCommon (text: string, what: string): string | null {
  if (typeof text !== 'string') return `${what} must be a string`
  if (text.length === 0) return `${what} is empty`
  if (text.includes('\0')) return `${what} contains U+0000`
  if (Buffer.byteLength(text, 'utf8') > MAX_TOPIC_BYTES) return `${what} is longer than ${MAX_TOPIC_BYTES} bytes`
  // Lone surrogates cannot be encoded as UTF-8, so they cannot reach us from the wire and must not be in a policy.
  if (LONE_SURROGATE.test(text)) return `${what} is not well-formed UTF-16 (lone surrogate)`
  return null
}

/** Why `topic` is not a valid topic name (what PUBLISH carries), or null when it is valid. */
export function topicNameProblem (topic: string): string | null {
  const common = checkCommon(topic, 'topic name')
  if (common !== null) return common
  if (topic.includes('+') || topic.includes('#')) return 'a topic name cannot contain the wildcards + or #'
  return null
}

/** Why `filter` is not a valid topic filter (what SUBSCRIBE carries), or null when it is valid. */
export function topicFilterProblem (filter: string): string | null {
  const common = checkCommon(filter, 'topic filter')
  if (common !== null) return common
  const levels = filter.split('/')
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i] as string
    if (level === '#') {
      if (i !== levels.length - 1) return "'#' must be the last level"
    } else if (level.includes('#')) {
      return "'#' must fill a whole level"
    } else if (level !== '+' && level.includes('+')) {
      return "'+' must fill a whole level"
    }
  }
  return null
}

export function isValidTopicName (topic: string): boolean {
  return topicNameProblem(topic) === null
}

export function isValidTopicFilter (filter: string): boolean {
  return topicFilterProblem(filter) === null
}

/** Splits a valid filter into levels with PLUS/HASH markers. Validate first: this does not. */
export function parseFilter (filter: string): FilterLevels {
  return filter.split('/').map((l) => l === '+' ? PLUS : l === '#' ? HASH : l)
}

/** Renders parsed levels back to filter text (a literal holding '+' or '#' prints as is). */
export function formatFilter (levels: FilterLevels): string {
  return levels.map((l) => l === PLUS ? '+' : l === HASH ? '#' : l).join('/')
}

function isWild (level: FilterLevel | undefined): boolean {
  return level === PLUS || level === HASH
}

function isDollarLiteral (level: FilterLevel | undefined): boolean {
  return typeof level === 'string' && level.charCodeAt(0) === 36
}

/**
 * Containment and overlap reason level by level, which needs every `#` to stand for "zero or more levels"
 * with zero being a real option. Two filters break that, because a topic name is never empty:
 * `#` cannot match zero levels (so it is exactly `+/#`), and `/#` cannot match its parent "" (so it is
 * exactly `/+/#`). Rewriting them first keeps the level-by-level rules exact.
 */
function normalize (levels: FilterLevels): FilterLevels {
  if (levels.length === 1 && levels[0] === HASH) return [PLUS, HASH]
  if (levels.length === 2 && levels[0] === '' && levels[1] === HASH) return ['', PLUS, HASH]
  return levels
}

/** Whether the parsed filter matches the topic levels; `dollar` = the topic name starts with '$'. */
export function matchLevels (filter: FilterLevels, topic: readonly string[], dollar: boolean): boolean {
  // 4.7.2: a filter starting with a wildcard never matches a topic starting with '$'.
  if (dollar && isWild(filter[0])) return false
  const n = topic.length
  for (let i = 0; i < filter.length; i++) {
    const f = filter[i]
    if (f === HASH) return true
    if (i >= n) return false
    if (f !== PLUS && f !== topic[i]) return false
  }
  return filter.length === n
}

/**
 * Whether every valid topic name matched by `requested` is also matched by `allowed` (both parsed).
 * Containment is per single filter: it never combines two allowed filters.
 */
export function coversLevels (allowedIn: FilterLevels, requestedIn: FilterLevels): boolean {
  const allowed = normalize(allowedIn)
  const requested = normalize(requestedIn)
  // A wildcard first level excludes $-topics; a requested `$x/...` always matches some $-topic.
  if (isWild(allowed[0]) && isDollarLiteral(requested[0])) return false
  for (let i = 0; ; i++) {
    const a = allowed[i]
    const r = requested[i]
    if (a === HASH) return true
    if (r === undefined) return a === undefined
    if (a === undefined) return false
    // `#` requests arbitrarily deep topics and the parent level; only a `#` here could cover that.
    if (r === HASH) return false
    if (r === PLUS) {
      if (a !== PLUS) return false
    } else if (a !== PLUS && a !== r) {
      return false
    }
  }
}

/** Whether some valid topic name is matched by both parsed filters. */
export function overlapsLevels (f1In: FilterLevels, f2In: FilterLevels): boolean {
  const f1 = normalize(f1In)
  const f2 = normalize(f2In)
  if (isWild(f1[0]) && isDollarLiteral(f2[0])) return false
  if (isWild(f2[0]) && isDollarLiteral(f1[0])) return false
  for (let i = 0; ; i++) {
    const a = f1[i]
    const b = f2[i]
    // The rest of the other filter can always be instantiated as a valid topic (a `+` as "x").
    if (a === HASH || b === HASH) return true
    if (a === undefined || b === undefined) return a === b
    if (a !== PLUS && b !== PLUS && a !== b) return false
  }
}

/** MQTT matching: whether the topic filter `filter` matches the topic name `topic`. Both must be valid. */
export function matches (filter: string, topic: string): boolean {
  return matchLevels(parseFilter(filter), topic.split('/'), topic.charCodeAt(0) === 36)
}

/** Whether every topic matched by `requested` is matched by `allowed` (both valid filters). */
export function covers (allowed: string, requested: string): boolean {
  return coversLevels(parseFilter(allowed), parseFilter(requested))
}

/** Whether at least one topic is matched by both filters (both valid filters). */
export function overlaps (f1: string, f2: string): boolean {
  return overlapsLevels(parseFilter(f1), parseFilter(f2))
}
