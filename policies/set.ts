// An immutable, indexed set of statements with a generation number, so compiled authorizers can tell it was replaced.
import type { Identity, Statement } from './model.js'

let nextGeneration = 1

/** Compiles an id glob (`*`, `?`; never a regex) into an anchored RegExp. */
export function globToRegExp (glob: string): RegExp {
  let source = '^'
  for (const c of glob) {
    if (c === '*') source += '.*'
    else if (c === '?') source += '.'
    else source += c.replace(/[\\^$.*+?()[\]{}|/-]/g, '\\$&')
  }
  return new RegExp(source + '$', 's')
}

function isGlob (pattern: string): boolean {
  return pattern.includes('*') || pattern.includes('?')
}

interface IndexedStatement {
  readonly order: number
  readonly statement: Statement
  readonly kinds: ReadonlySet<string> | undefined
  readonly groups: ReadonlySet<string> | undefined
  readonly exactIds: ReadonlySet<string> | undefined
  readonly idGlobs: readonly RegExp[] | undefined
}

function push<K> (map: Map<K, IndexedStatement[]>, key: K, s: IndexedStatement): void {
  const list = map.get(key)
  if (list === undefined) map.set(key, [s])
  else list.push(s)
}

/** What `compileFor` and `watchPolicies` accept: a set, or something that always knows the current set. */
export interface PolicySource {
  current (): PolicySet
}

/**
 * A validated, immutable set of statements. Each instance gets a new `generation`, so an `Authorizer`
 * compiled from an older set notices with one integer compare and recompiles.
 */
export class PolicySet implements PolicySource {
  readonly generation: number
  readonly statements: readonly Statement[]
  /** The files the statements came from, in load order. */
  readonly files: readonly string[]
  /** sha256 over file names and contents: equal digests mean nothing changed. */
  readonly digest: string

  // Each statement sits in exactly one bucket, chosen by its most selective principal, so an identity
  // only tests the statements that could possibly apply to it instead of all of them.
  readonly #byId = new Map<string, IndexedStatement[]>()
  readonly #byGroup = new Map<string, IndexedStatement[]>()
  readonly #byKind = new Map<string, IndexedStatement[]>()
  readonly #scan: IndexedStatement[] = []

  constructor (statements: readonly Statement[], files: readonly string[] = [], digest = '') {
    this.generation = nextGeneration++
    this.statements = Object.freeze([...statements])
    this.files = Object.freeze([...files])
    this.digest = digest
    this.statements.forEach((statement, order) => {
      const p = statement.principals
      const ids = p.ids
      const s: IndexedStatement = {
        order,
        statement,
        kinds: p.kinds === undefined ? undefined : new Set(p.kinds),
        groups: p.groups === undefined ? undefined : new Set(p.groups),
        exactIds: ids === undefined ? undefined : new Set(ids.filter((g) => !isGlob(g))),
        idGlobs: ids === undefined ? undefined : ids.filter(isGlob).map(globToRegExp),
      }
      if (ids !== undefined && !ids.some(isGlob)) for (const id of ids) push(this.#byId, id, s)
      else if (p.groups !== undefined) for (const g of p.groups) push(this.#byGroup, g, s)
      else if (ids === undefined && p.kinds !== undefined) for (const k of p.kinds) push(this.#byKind, k, s)
      else this.#scan.push(s)
    })
  }

  current (): PolicySet {
    return this
  }

  /** The statements whose principals match the identity, in file and statement order. */
  statementsFor (identity: Identity): Statement[] {
    const seen = new Set<IndexedStatement>()
    const add = (list: readonly IndexedStatement[] | undefined): void => {
      if (list !== undefined) for (const s of list) seen.add(s)
    }
    add(this.#byId.get(identity.id))
    for (const g of identity.groups) add(this.#byGroup.get(g))
    add(this.#byKind.get(identity.kind))
    add(this.#scan)
    const hits: IndexedStatement[] = []
    for (const s of seen) if (principalsMatch(s, identity)) hits.push(s)
    hits.sort((a, b) => a.order - b.order)
    return hits.map((s) => s.statement)
  }
}

function principalsMatch (s: IndexedStatement, identity: Identity): boolean {
  if (s.kinds !== undefined && !s.kinds.has(identity.kind)) return false
  if (s.groups !== undefined && !identity.groups.some((g) => s.groups?.has(g) === true)) return false
  if (s.exactIds !== undefined && s.idGlobs !== undefined) {
    if (!s.exactIds.has(identity.id) && !s.idGlobs.some((re) => re.test(identity.id))) return false
  }
  return true
}
