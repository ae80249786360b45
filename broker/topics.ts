// Topic hygiene the broker enforces before any policy: sizes, levels, NUL and wildcard placement.

/** Limits on topic names and filters; see BrokerLimits for the defaults. */
export interface TopicLimits {
  maxTopicBytes: number
  maxTopicLevels: number
}

/** Why a topic name or filter is refused; any of these closes the connection (MQTT 3.1.1 section 4.8). */
export type TopicViolation =
  | 'empty-topic'
  | 'topic-too-long'
  | 'too-many-levels'
  | 'nul-in-topic'
  | 'wildcard-in-topic'
  | 'bad-wildcard'

function levels (topic: string): number {
  let n = 1
  for (let i = 0; i < topic.length; i++) if (topic.charCodeAt(i) === 47) n++
  return n
}

/** A UTF-16 code unit is 1 to 3 UTF-8 bytes, so most topics are judged on their length without being encoded. */
function tooLong (topic: string, maxBytes: number): boolean {
  if (topic.length > maxBytes) return true
  return topic.length * 3 > maxBytes && Buffer.byteLength(topic, 'utf8') > maxBytes
}

function common (topic: unknown, limits: TopicLimits): TopicViolation | null {
  if (typeof topic !== 'string' || topic.length === 0) return 'empty-topic'
  if (tooLong(topic, limits.maxTopicBytes)) return 'topic-too-long'
  if (topic.includes('\u0000')) return 'nul-in-topic'
  if (levels(topic) > limits.maxTopicLevels) return 'too-many-levels'
  return null
}

/** A topic name (PUBLISH, Last Will): no wildcards. Same verdicts as `common` then a wildcard test, in one pass. */
export function checkTopicName (topic: unknown, limits: TopicLimits): TopicViolation | null {
  if (typeof topic !== 'string' || topic.length === 0) return 'empty-topic'
  if (tooLong(topic, limits.maxTopicBytes)) return 'topic-too-long'
  // Runs on every PUBLISH: one scan instead of one per property.
  let n = 1
  let wildcard = false
  for (let i = 0; i < topic.length; i++) {
    const c = topic.charCodeAt(i)
    if (c === 47) n++
    else if (c === 0) return 'nul-in-topic'
    else if (c === 35 || c === 43) wildcard = true
  }
  if (n > limits.maxTopicLevels) return 'too-many-levels'
  return wildcard ? 'wildcard-in-topic' : null
}

/** A topic filter (SUBSCRIBE): `+` fills a whole level, `#` only as the whole last level. */
export function checkTopicFilter (filter: unknown, limits: TopicLimits): TopicViolation | null {
  const bad = common(filter, limits)
  if (bad !== null) return bad
  const parts = (filter as string).split('/')
  for (let i = 0; i < parts.length; i++) {
    const level = parts[i] as string
    if (level === '#' && i !== parts.length - 1) return 'bad-wildcard'
    if (level !== '#' && level !== '+' && (level.includes('#') || level.includes('+'))) return 'bad-wildcard'
  }
  return null
}
