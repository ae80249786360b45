// The authorization seam: what the broker asks about each publish, subscribe and delivery, and the narrow default.
import type { Kind } from '../common/ids.js'

export type Qos = 0 | 1 | 2

/** One answer. Structurally the policy engine's Decision (policies/model.ts), so its authorizers plug in as they are. */
export interface Decision {
  readonly effect: 'allow' | 'deny'
  readonly reason: string
  /** Name of the statement that decided, when one did. */
  readonly statement?: string
  /** Subscribe/receive: the QoS granted (the request's, capped by the statement). */
  readonly grantedQos?: Qos
}

/** Per-connection decisions, compiled once at CONNECT; every method is synchronous (it runs per message). */
export interface Authorizer {
  publish (topic: string, opts: { qos: Qos, retain: boolean }): Decision
  subscribe (filter: string, opts: { qos: Qos }): Decision
  receive (topic: string, opts: { qos: Qos, retain: boolean }): Decision
}

/** What an authorizer is compiled for: the certificate identity. */
export interface AuthIdentity {
  id: string
  kind: Kind
  groups: readonly string[]
  serial?: string | undefined
}

export type AuthorizerFactory = (identity: AuthIdentity) => Authorizer

const DEFAULT_STATEMENT = 'default:own-device-topics'

function allow (grantedQos?: Qos): Decision {
  return grantedQos === undefined
    ? { effect: 'allow', reason: 'allowed', statement: DEFAULT_STATEMENT }
    : { effect: 'allow', reason: 'allowed', statement: DEFAULT_STATEMENT, grantedQos }
}

const NO_MATCH: Decision = Object.freeze({ effect: 'deny', reason: 'no-match' })

/**
 * The narrowest useful default while no policy is configured: every identity may publish, subscribe and receive
 * only under `devices/<own id>` and below. `$SYS` and every other topic are out of reach. Ids never contain
 * `/`, `+` or `#` (common/ids), so the prefix test cannot be widened by a crafted id.
 */
export const ownTopicsAuthorizer: AuthorizerFactory = (identity) => {
  const root = `devices/${identity.id}`
  const prefix = `${root}/`
  const owns = (topic: string): boolean => topic === root || topic.startsWith(prefix)
  return {
    publish: (topic) => owns(topic) ? allow() : NO_MATCH,
    // A filter below the own prefix can only match own topics, whatever wildcards follow.
    subscribe: (filter, { qos }) => owns(filter) ? allow(qos) : NO_MATCH,
    receive: (topic, { qos }) => owns(topic) ? allow(qos) : NO_MATCH,
  }
}

/** Refuses everything: what an unconfigured plugin uses, so a mistake never opens a topic. */
export const denyAllAuthorizer: AuthorizerFactory = () => ({
  publish: () => NO_MATCH,
  subscribe: () => NO_MATCH,
  receive: () => NO_MATCH,
})
