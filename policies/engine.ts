// Evaluation: compiles the statements that apply to one identity into an Authorizer that answers per topic, cached.
import { ZtError } from '../common/errors.js'
import { checkGroup, checkId, checkKind } from '../common/ids.js'
import type { Action, Decision, Entry, Identity, Qos, Statement } from './model.js'
import type { PolicySet, PolicySource } from './set.js'
import { coversLevels, HASH, overlapsLevels, parseFilter, PLUS, topicFilterProblem, topicNameProblem, type FilterLevel, type FilterLevels } from './topic.js'

/** Topics cached per connection and action; a device uses a handful of topics, a bridge more, neither unbounded. */
export const DEFAULT_CACHE_SIZE = 1000

/** An entry with the identity's values substituted: every substituted level is a literal string. */
interface CompiledEntry {
  readonly order: number
  readonly levels: FilterLevels
  readonly retain: boolean | undefined
  readonly maxQos: Qos
  readonly statement: string
  readonly entry: string
}

/** A trie over filter levels, so a publish or receive check walks the topic once instead of testing every entry. */
class Trie {
  // Created at the first literal child: most nodes are leaves or have only wildcard children.
  lit: Map<string, Trie> | undefined
  plus: Trie | undefined
  hash: CompiledEntry[] | undefined
  end: CompiledEntry[] | undefined

  insert (e: CompiledEntry): void {
    let node: Trie = this
    for (const level of e.levels) {
      if (level === HASH) {
        (node.hash ??= []).push(e)
        return
      }
      if (level === PLUS) {
        node = node.plus ??= new Trie()
      } else {
        const lit = node.lit ??= new Map()
        let next = lit.get(level)
        if (next === undefined) lit.set(level, next = new Trie())
        node = next
      }
    }
    (node.end ??= []).push(e)
  }

  /** Appends every entry whose filter matches the topic; `dollar` keeps first-level wildcards off $-topics. */
  collect (topic: readonly string[], i: number, dollar: boolean, out: CompiledEntry[]): void {
    const wild = i !== 0 || !dollar
    // A `#` here matches the remaining levels, zero included: that is the "parent level" rule.
    if (wild && this.hash !== undefined) out.push(...this.hash)
    if (i === topic.length) {
      if (this.end !== undefined) out.push(...this.end)
      return
    }
    this.lit?.get(topic[i] as string)?.collect(topic, i + 1, dollar, out)
    if (wild) this.plus?.collect(topic, i + 1, dollar, out)
  }
}

interface ActionTable {
  /** Subscribe only (decideSubscribe); empty for publish and receive. */
  readonly allow: readonly CompiledEntry[]
  readonly deny: readonly CompiledEntry[]
  /** Publish and receive only (decideMessage); empty for subscribe. */
  readonly allowTrie: Trie
  readonly denyTrie: Trie
  /**
   * Whether a decision can differ by QoS or retain flag for the same topic, so the cache must keep one per
   * variant. Without retain conditions and maxQos caps a publish decision depends on the topic alone.
   */
  readonly variants: boolean
}

interface Compiled {
  readonly generation: number
  readonly statements: readonly string[]
  readonly publish: ActionTable
  readonly subscribe: ActionTable
  readonly receive: ActionTable
}

function freeze (d: Decision): Decision {
  return Object.freeze(d)
}

const NO_MATCH = freeze({ effect: 'deny', reason: 'no-match' })

function invalid (problem: string): Decision {
  return freeze({ effect: 'deny', reason: 'invalid', detail: problem })
}

/**
 * Aedes acts on messages under $SYS/ whoever sent them: another node's heartbeat and birth, and
 * `$SYS/<node>/new/clients`, which disconnects that client id on every node. Statements may grant reading $SYS;
 * publishing there is refused whatever they say, so no policy can hand a client the cluster's control plane.
 */
function isSysTopic (topic: string): boolean {
  return topic.startsWith('$SYS/') || topic === '$SYS'
}
const SYS_RESERVED: Decision = freeze({ effect: 'deny', reason: 'sys-reserved', detail: 'nobody publishes under $SYS/: it is the broker\'s own namespace' })

/** Substitutes the identity into one entry; `${group}` yields one filter per group, none without groups. */
export function substitute (entry: Entry, identity: Identity): FilterLevel[][] {
  const usesGroup = entry.levels.some((l) => typeof l === 'object' && l.variable === 'group')
  const groups: ReadonlyArray<string | undefined> = usesGroup ? identity.groups : [undefined]
  const out: FilterLevel[][] = []
  for (const group of groups) {
    const levels: FilterLevel[] = []
    let vanished = false
    for (const l of entry.levels) {
      if (typeof l !== 'object') {
        levels.push(l)
        continue
      }
      const value = l.variable === 'id' ? identity.id : l.variable === 'kind' ? identity.kind : l.variable === 'group' ? group : identity.serial
      if (value === undefined || value === '') {
        vanished = true
        break
      }
      // A string level is a literal to the matcher whatever it contains: the value can never act as a wildcard.
      levels.push(value)
    }
    if (!vanished) out.push(levels)
  }
  return out
}

/** An entry's description in decisions (`allow.publish[0] "devices/${id}/#"`): the same for every identity, so made once. */
const ENTRY_NAMES = new WeakMap<Entry, string>()
function entryName (e: Entry): string {
  let name = ENTRY_NAMES.get(e)
  if (name === undefined) ENTRY_NAMES.set(e, name = `${e.label} ${JSON.stringify(e.topic)}`)
  return name
}

const NO_ENTRIES: readonly CompiledEntry[] = Object.freeze([])
/** The trie of a table without entries; never inserted into, so every such table can share it. */
const EMPTY_TRIE = new Trie()

function compile (set: PolicySet, identity: Identity): Compiled {
  return compileStatements(set.generation, set.statementsFor(identity), identity)
}

function compileStatements (generation: number, statements: readonly Statement[], identity: Identity): Compiled {
  let order = 0
  const table = (action: Action): ActionTable => {
    const allow: CompiledEntry[] = []
    const deny: CompiledEntry[] = []
    for (const s of statements) {
      for (const [effect, into] of [['allow', allow], ['deny', deny]] as const) {
        for (const e of s[effect][action]) {
          for (const levels of substitute(e, identity)) {
            into.push({ order: order++, levels, retain: e.retain, maxQos: e.maxQos ?? 2, statement: s.name, entry: entryName(e) })
          }
        }
      }
    }
    const trie = (entries: readonly CompiledEntry[]): Trie => {
      if (entries.length === 0) return EMPTY_TRIE
      const t = new Trie()
      for (const e of entries) t.insert(e)
      return t
    }
    // Subscribe and receive grant a QoS, so their decisions always carry the request's QoS.
    const variants = action !== 'publish' || allow.some((e) => e.retain !== undefined || e.maxQos < 2) || deny.some((e) => e.retain !== undefined)
    // Publish and receive walk the tries; subscribe compares whole filters against the lists: each keeps only its own.
    const lists = action === 'subscribe'
    return {
      allow: lists && allow.length > 0 ? allow : NO_ENTRIES,
      deny: lists && deny.length > 0 ? deny : NO_ENTRIES,
      allowTrie: lists ? EMPTY_TRIE : trie(allow),
      denyTrie: lists ? EMPTY_TRIE : trie(deny),
      variants,
    }
  }
  return {
    generation,
    statements: statements.map((s: Statement) => s.name),
    publish: table('publish'),
    subscribe: table('subscribe'),
    receive: table('receive'),
  }
}

function first (entries: readonly CompiledEntry[]): CompiledEntry | undefined {
  let best: CompiledEntry | undefined
  for (const e of entries) if (best === undefined || e.order < best.order) best = e
  return best
}

function decided (effect: 'allow' | 'deny', reason: Decision['reason'], e: CompiledEntry, grantedQos?: Qos): Decision {
  return freeze({ effect, reason, statement: e.statement, entry: e.entry, ...(grantedQos === undefined ? {} : { grantedQos }) })
}

/** Publish and receive: deny entries first, then the allow entry that grants the most. */
function decideMessage (t: ActionTable, topic: string, qos: Qos, retain: boolean, capQos: boolean): Decision {
  const problem = topicNameProblem(topic)
  if (problem !== null) return invalid(problem)
  const levels = topic.split('/')
  const dollar = topic.charCodeAt(0) === 36
  const hits: CompiledEntry[] = []
  t.denyTrie.collect(levels, 0, dollar, hits)
  const deny = first(hits.filter((e) => e.retain === undefined || e.retain === retain))
  if (deny !== undefined) return decided('deny', 'denied', deny)
  hits.length = 0
  t.allowTrie.collect(levels, 0, dollar, hits)
  if (hits.length === 0) return NO_MATCH
  let best: CompiledEntry | undefined
  for (const e of hits) {
    if (e.retain !== undefined && e.retain !== retain) continue
    // Publish at a QoS above maxQos is refused (the client chose it); receive is delivered at the cap instead.
    if (!capQos && qos > e.maxQos) continue
    if (best === undefined || Math.min(e.maxQos, qos) > Math.min(best.maxQos, qos) || (Math.min(e.maxQos, qos) === Math.min(best.maxQos, qos) && e.order < best.order)) best = e
  }
  if (best === undefined) return decided('deny', 'condition', first(hits) as CompiledEntry)
  return capQos ? decided('allow', 'allowed', best, Math.min(qos, best.maxQos) as Qos) : decided('allow', 'allowed', best)
}

function decideSubscribe (t: ActionTable, filter: string, qos: Qos): Decision {
  const problem = topicFilterProblem(filter)
  if (problem !== null) return invalid(problem)
  const requested = parseFilter(filter)
  for (const e of t.deny) {
    // A deny with a retain condition only withholds some messages; it is enforced on receive, not here.
    if (e.retain === undefined && overlapsLevels(e.levels, requested)) return decided('deny', 'denied', e)
  }
  let best: CompiledEntry | undefined
  for (const e of t.allow) {
    if (!coversLevels(e.levels, requested)) continue
    if (best === undefined || Math.min(e.maxQos, qos) > Math.min(best.maxQos, qos)) best = e
  }
  return best === undefined ? NO_MATCH : decided('allow', 'allowed', best, Math.min(qos, best.maxQos) as Qos)
}

export interface MessageOptions {
  /** QoS of the PUBLISH (publish) or of the delivery (receive). @default 0 */
  qos?: Qos
  /** Retain flag of the PUBLISH (publish) or of the delivered message (receive). @default false */
  retain?: boolean
}

export interface SubscribeOptions {
  /** Requested QoS. @default 0 */
  qos?: Qos
}

/**
 * The per-connection decision maker. Build it once at CONNECT with `compileFor(source, identity)` and ask it
 * from the hooks; every call is synchronous, cached, and follows policy reloads by itself.
 */
export interface Authorizer {
  readonly identity: Readonly<Identity>
  /** May this client PUBLISH to `topic`? A QoS above the entry's maxQos or a retain flag the entry excludes is denied (`condition`). */
  publish (topic: string, options?: MessageOptions): Decision
  /**
   * May this client SUBSCRIBE to `filter`? Allowed only when one allowed filter covers it entirely and no denied
   * filter overlaps it. When allowed, `grantedQos` is the QoS to put in the SUBACK (capped by maxQos).
   */
  subscribe (filter: string, options?: SubscribeOptions): Decision
  /**
   * May this message be delivered to this client? Ask on every delivery (live, retained, queued, forwarded).
   * When allowed, deliver at `grantedQos` (the QoS capped by maxQos).
   */
  receive (topic: string, options?: MessageOptions): Decision
  /** Names of the statements that apply to this identity, in evaluation order. */
  readonly statements: readonly string[]
  /** Generation of the PolicySet the current compilation came from. */
  readonly generation: number
}

export interface CompileOptions {
  /** Topics (or filters) cached per action, each with its QoS/retain variants; 0 turns the cache off. @default 1000 */
  cacheSize?: number
}

/** A topic's cached answer: the decision itself, or one per variant (see `variantSlot`) when the table has variants. */
type Cached = Decision | Array<Decision | undefined>

const VARIANTS = 6

/** Index of a (QoS, retain) variant, or -1 for a QoS outside 0-2, which is decided uncached. */
function variantSlot (qos: number, retain: boolean): number {
  const base = qos === 0 ? 0 : qos === 1 ? 2 : qos === 2 ? 4 : -1
  return base < 0 ? -1 : retain ? base + 1 : base
}

/**
 * Topic → decision, bounded in two generations: a hit is one Map lookup with the topic itself as the key, and
 * eviction drops the older half at once instead of reordering on every hit. What is used keeps getting promoted
 * into the young map, so a working set below half the size is never decided twice.
 */
class DecisionCache {
  readonly #half: number
  #young = new Map<string, Cached>()
  #old: Map<string, Cached> | undefined

  constructor (size: number) {
    this.#half = Math.max(1, Math.ceil(size / 2))
  }

  get (key: string): Cached | undefined {
    const hit = this.#young.get(key)
    if (hit !== undefined || this.#old === undefined) return hit
    const old = this.#old.get(key)
    if (old !== undefined) this.set(key, old)
    return old
  }

  set (key: string, value: Cached): void {
    if (this.#young.size >= this.#half) {
      this.#old = this.#young
      this.#young = new Map()
    }
    this.#young.set(key, value)
  }
}

class CompiledAuthorizer implements Authorizer {
  readonly identity: Readonly<Identity>
  readonly #source: PolicySource
  readonly #cacheSize: number
  /**
   * Compiled at the first question, not at construction: a connection that never publishes, subscribes or receives
   * (an idle device) holds no tables. Compiling is pure (statements and identity only), so when it happens does not
   * change any answer: every question compiles against the set current at that moment, as a reload always did.
   */
  #compiled: Compiled | undefined
  // Per action, created at first use and replaced on recompile; undefined when caching is off.
  #publish: DecisionCache | undefined
  #receive: DecisionCache | undefined
  #subscribe: DecisionCache | undefined

  constructor (source: PolicySource, identity: Identity, cacheSize: number) {
    // A frozen groups list (the broker's identities) cannot change under us: no need to copy it.
    const groups = Object.isFrozen(identity.groups) ? identity.groups : Object.freeze([...identity.groups])
    // The four fields spelled out: a spread copy gets a hidden class (and descriptors) of its own every time.
    this.identity = Object.freeze(identity.serial === undefined
      ? { id: identity.id, kind: identity.kind, groups }
      : { id: identity.id, kind: identity.kind, groups, serial: identity.serial })
    this.#source = source
    this.#cacheSize = cacheSize
  }

  #current (): Compiled {
    const set = this.#source.current()
    if (this.#compiled === undefined || set.generation !== this.#compiled.generation) {
      try {
        this.#compiled = compile(set, this.identity)
      } catch {
        // Compiling runs inside the broker's synchronous per-message hooks now: a failure must deny, never throw.
        // (compileFor validated the identity, so this is a defect guard, not an expected path.)
        this.#compiled = compileStatements(set.generation, [], this.identity)
      }
      this.#publish = this.#receive = this.#subscribe = undefined
    }
    return this.#compiled
  }

  #cache (cache: DecisionCache | undefined): DecisionCache | undefined {
    return cache ?? (this.#cacheSize > 0 ? new DecisionCache(this.#cacheSize) : undefined)
  }

  #message (t: ActionTable, cache: DecisionCache | undefined, topic: string, options: MessageOptions | undefined, capQos: boolean): Decision {
    const qos = options?.qos ?? 0
    const retain = options?.retain === true
    const slot = variantSlot(qos, retain)
    if (cache === undefined || slot < 0) return decideMessage(t, topic, qos, retain, capQos)
    const hit = cache.get(topic)
    if (!t.variants) {
      if (hit !== undefined) return hit as Decision
      const d = decideMessage(t, topic, qos, retain, capQos)
      cache.set(topic, d)
      return d
    }
    let variants = hit as Array<Decision | undefined> | undefined
    const found = variants?.[slot]
    if (found !== undefined) return found
    if (variants === undefined) cache.set(topic, variants = new Array<Decision | undefined>(VARIANTS).fill(undefined))
    return (variants[slot] = decideMessage(t, topic, qos, retain, capQos))
  }

  publish (topic: string, options?: MessageOptions): Decision {
    if (isSysTopic(topic)) return SYS_RESERVED
    const t = this.#current().publish
    return this.#message(t, this.#publish = this.#cache(this.#publish), topic, options, false)
  }

  subscribe (filter: string, options?: SubscribeOptions): Decision {
    const t = this.#current().subscribe
    const cache = this.#subscribe = this.#cache(this.#subscribe)
    const qos = options?.qos ?? 0
    const slot = variantSlot(qos, false)
    if (cache === undefined || slot < 0) return decideSubscribe(t, filter, qos)
    let variants = cache.get(filter) as Array<Decision | undefined> | undefined
    const found = variants?.[slot]
    if (found !== undefined) return found
    if (variants === undefined) cache.set(filter, variants = new Array<Decision | undefined>(VARIANTS).fill(undefined))
    return (variants[slot] = decideSubscribe(t, filter, qos))
  }

  receive (topic: string, options?: MessageOptions): Decision {
    const t = this.#current().receive
    return this.#message(t, this.#receive = this.#cache(this.#receive), topic, options, true)
  }

  get statements (): readonly string[] {
    return this.#current().statements
  }

  get generation (): number {
    return this.#current().generation
  }
}

/**
 * Compiles the statements that apply to `identity` (principals matched, variables substituted) into an
 * Authorizer. Pass the watcher from `watchPolicies` (or any `{ current() }`) as `source` and the Authorizer
 * recompiles lazily whenever the set's generation changes; pass a PolicySet for a fixed set.
 * @throws ZtError ZT_BAD_ID / ZT_BAD_KIND when the identity is outside the id alphabet or kinds.
 */
export function compileFor (source: PolicySource, identity: Identity, options: CompileOptions = {}): Authorizer {
  checkId(identity.id, 'policy')
  checkKind(identity.kind, 'policy')
  for (const g of identity.groups) checkGroup(g, 'policy')
  if (identity.serial !== undefined && !/^[0-9a-f]*$/.test(identity.serial)) {
    throw new ZtError('ZT_BAD_ARGUMENT', `policy: serial ${JSON.stringify(identity.serial)} is not lower-case hex`)
  }
  const cacheSize = options.cacheSize ?? DEFAULT_CACHE_SIZE
  return new CompiledAuthorizer(source, identity, cacheSize)
}

export type Request =
  | { action: 'publish', topic: string, qos?: Qos, retain?: boolean }
  | { action: 'subscribe', filter: string, qos?: Qos }
  | { action: 'receive', topic: string, qos?: Qos, retain?: boolean }

export interface Explanation {
  readonly decision: Decision
  /** Statements that apply to the identity, in evaluation order. */
  readonly statements: readonly string[]
}

/** One uncached decision with the statements that were in play: what `policy explain` prints. */
export function explain (source: PolicySource, identity: Identity, request: Request): Explanation {
  const a = compileFor(source, identity, { cacheSize: 0 })
  const opts = { qos: request.qos ?? 0 }
  const decision = request.action === 'subscribe'
    ? a.subscribe(request.filter, opts)
    : a[request.action](request.topic, { ...opts, retain: request.retain === true })
  return { decision, statements: a.statements }
}

/** One line for people and logs: `allow by statement "x" (allow.publish[0] "devices/${id}/#")`. */
export function describeDecision (d: Decision): string {
  const qos = d.grantedQos === undefined ? '' : `, granted QoS ${d.grantedQos}`
  switch (d.reason) {
    case 'allowed': return `allow by statement ${JSON.stringify(d.statement)} (${d.entry ?? ''})${qos}`
    case 'denied': return `deny by statement ${JSON.stringify(d.statement)} (${d.entry ?? ''})`
    case 'condition': return `deny: statement ${JSON.stringify(d.statement)} (${d.entry ?? ''}) matches but its conditions (retain, maxQos) exclude this request`
    case 'invalid': return `deny: invalid request: ${d.detail ?? ''}`
    case 'no-match': return 'deny: no statement allows it (default deny)'
    case 'sys-reserved': return `deny: ${d.detail ?? 'publishing under $SYS/ is reserved'}`
  }
}
