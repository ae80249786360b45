// The vocabulary of the policy engine: identities, statements as loaded, and the decisions it returns.
import type { Kind } from '../common/ids.js'
import type { HASH, PLUS } from './topic.js'

export const ACTIONS = ['publish', 'subscribe', 'receive'] as const
/** `publish`: a topic the client sends to; `subscribe`: a filter it asks for; `receive`: a topic delivered to it. */
export type Action = typeof ACTIONS[number]

export type Qos = 0 | 1 | 2

export const VARIABLES = ['id', 'kind', 'group', 'serial'] as const
export type Variable = typeof VARIABLES[number]

/** The identity a connection proved with its certificate. */
export interface Identity {
  /** Certificate id (CN = SAN URI id), in the id alphabet. */
  id: string
  kind: Kind
  /** Subject OU values; `${group}` expands once per group, so none means such entries vanish. */
  groups: readonly string[]
  /** Canonical lower-case hex serial; when absent, entries that use `${serial}` vanish. */
  serial?: string | undefined
}

/** A level of a topic template: a literal, a wildcard, or a variable that fills the whole level. */
export type TemplateLevel = string | typeof PLUS | typeof HASH | { readonly variable: Variable }

/** One topic entry of a statement, as written (`topic`) and parsed (`levels`). */
export interface Entry {
  /** The topic filter as written, variables included, e.g. `devices/${id}/#`. */
  readonly topic: string
  readonly levels: readonly TemplateLevel[]
  /** When set, the entry applies only to messages whose retain flag equals it. */
  readonly retain?: boolean
  /** Allow entries only: the highest QoS granted under this entry. */
  readonly maxQos?: Qos
  /** Where it was written, for explanations: `allow.publish[0]`, or `allow.subscribe[2]` for a defaulted receive. */
  readonly label: string
}

export type EntryLists = Readonly<Record<Action, readonly Entry[]>>

export interface Principals {
  readonly kinds?: readonly Kind[]
  readonly groups?: readonly string[]
  /** Globs over ids: `*` any run of characters, `?` exactly one. */
  readonly ids?: readonly string[]
}

export interface Statement {
  readonly name: string
  readonly description?: string
  /** File the statement came from, as given to the loader. */
  readonly file: string
  readonly principals: Principals
  readonly allow: EntryLists
  readonly deny: EntryLists
}

export type Effect = 'allow' | 'deny'

/**
 * Why a decision was made:
 * - `allowed`: an allow entry matched and no deny entry did;
 * - `denied`: a deny entry matched (deny wins over allow);
 * - `no-match`: nothing allows it (default deny);
 * - `condition`: an allow entry matched the topic but its conditions (retain, maxQos) excluded the request;
 * - `invalid`: the topic or filter is not valid MQTT;
 * - `sys-reserved`: a publish under `$SYS/`, which no statement can allow (Aedes acts on those messages).
 */
export type Reason = 'allowed' | 'denied' | 'no-match' | 'condition' | 'invalid' | 'sys-reserved'

/** The answer to one request. Shared and frozen: do not mutate. */
export interface Decision {
  readonly effect: Effect
  readonly reason: Reason
  /** Name of the statement that decided; absent for default deny and invalid requests. */
  readonly statement?: string
  /** The entry that decided, e.g. `allow.publish[0] "devices/${id}/#"`. */
  readonly entry?: string
  /** Subscribe and receive when allowed: the QoS granted, the request's QoS capped by the entry's maxQos. */
  readonly grantedQos?: Qos
  /** For `invalid`: what is wrong with the topic or filter. */
  readonly detail?: string
}
