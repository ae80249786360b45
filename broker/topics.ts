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

function common (topic: unknown, limits: TopicLimits): TopicViolation | null {
  if (typeof topic !== 'string' || topic.length === 0) return 'empty-topic'
  if (Buffer.byteLength(topic, 'utf8') > limits.maxTopicBytes) return 'topic-too-long'
  if (topic.includes('\u0000')) return 'nul-in-topic'
  if (levels(topic) > limits.maxTopicLevels) return 'too-many-levels'
  return null
}

/** A topic name (PUBLISH, Last Will): no wildcards. */
export function checkTopicName (topic: unknown, limits: TopicLimits): TopicViolation | null {
  const bad = common(topic, limits)
  if (bad !== null) return bad
  return (topic as string).includes('+') || (topic as string).includes('#') ? 'wildcard-in-topic' : null
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
