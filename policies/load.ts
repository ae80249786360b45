// Reads policy files (YAML or JSON), validates every rule of the policy language, and builds a PolicySet.
import { createHash } from 'node:crypto'
import { createRequire } from 'node:module'
import { Worker } from 'node:worker_threads'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { readdir, readFile, stat } from 'node:fs/promises'
import { dirname, extname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseDocument } from 'yaml'
import { ZtError } from '../common/errors.js'
import { isKind, isValidId, KINDS, type Kind } from '../common/ids.js'
import { ACTIONS, VARIABLES, type Action, type Entry, type EntryLists, type Principals, type Qos, type Statement, type TemplateLevel, type Variable } from './model.js'
import { PolicySet } from './set.js'
import { HASH, PLUS, topicFilterProblem } from './topic.js'

/** Extensions the loader reads; everything else in the directory (the engine's own .ts/.js included) is ignored. */
export const POLICY_EXTENSIONS: readonly string[] = ['.yaml', '.yml', '.json']

const STATEMENT_KEYS = ['name', 'description', 'principals', 'allow', 'deny']
const PRINCIPAL_KEYS = ['kind', 'groups', 'ids']
const ENTRY_KEYS = ['topic', 'retain', 'maxQos']
/** Names show up in audit logs and `policy explain`; keep them to one plain token. */
const NAME_RE = /^[A-Za-z0-9_][A-Za-z0-9._:-]{0,127}$/
const ID_GLOB_RE = /^[A-Za-z0-9._*?-]{1,128}$/
const VARIABLE_LIST = VARIABLES.map((v) => `\${${v}}`).join(', ')

function isRecord (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function q (value: unknown): string {
  return JSON.stringify(value) ?? String(value)
}

function unknownKeys (obj: Record<string, unknown>, allowed: readonly string[]): string[] {
  return Object.keys(obj).filter((k) => !allowed.includes(k))
}

/**
 * Parses a topic template. A variable must fill a whole level (`devices/${id}/x`, never `devices/x${id}`):
 * a partial level would let a value's prefix or suffix combine with text around it into another device's
 * level, and whole levels are what the matcher can keep literal.
 */
export function parseTemplate (topic: string): { levels: TemplateLevel[] } | { problem: string } {
  if (!topic.includes('$')) {
    const problem = topicFilterProblem(topic)
    return problem === null ? { levels: topic.split('/').map((l) => l === '+' ? PLUS : l === '#' ? HASH : l) } : { problem }
  }
  const levels: TemplateLevel[] = []
  const plain: string[] = []
  for (const level of topic.split('/')) {
    if (!level.includes('${')) {
      levels.push(level === '+' ? PLUS : level === '#' ? HASH : level)
      plain.push(level)
      continue
    }
    for (const m of level.matchAll(/\$\{([^}]*)(\}?)/g)) {
      if (m[2] !== '}') return { problem: 'unterminated "${"' }
      if (!(VARIABLES as readonly string[]).includes(m[1] ?? '')) return { problem: `unknown variable "\${${m[1] ?? ''}}"; variables are ${VARIABLE_LIST}` }
    }
    const whole = /^\$\{([a-z]+)\}$/.exec(level)
    if (whole === null) return { problem: 'a variable must fill a whole level (e.g. "devices/${id}/x", not "devices/x-${id}")' }
    levels.push({ variable: whole[1] as Variable })
    plain.push('x')
  }
  // Wildcard placement is checked on the text with each variable replaced by a plain value.
  const problem = topicFilterProblem(plain.join('/'))
  return problem === null ? { levels } : { problem }
}

class FileChecker {
  readonly errors: string[] = []
  constructor (readonly file: string) {}

  fail (where: string, problem: string): void {
    this.errors.push(`${this.file}: ${where}${where === '' ? '' : ': '}${problem}`)
  }

  statements (doc: unknown): Statement[] {
    if (!isRecord(doc)) {
      this.fail('', doc === null || doc === undefined ? 'is empty; expected a mapping with a "policies" list' : 'expected a mapping with a "policies" list')
      return []
    }
    for (const k of unknownKeys(doc, ['policies'])) this.fail('', `unknown key ${q(k)} (expected "policies")`)
    const list = doc.policies
    if (!Array.isArray(list)) {
      this.fail('', list === undefined ? 'missing "policies"' : '"policies" must be a list')
      return []
    }
    const out: Statement[] = []
    list.forEach((raw: unknown, i) => {
      const s = this.statement(raw, i)
      if (s !== null) out.push(s)
    })
    return out
  }

  statement (raw: unknown, index: number): Statement | null {
    const rawName = isRecord(raw) ? raw.name : undefined
    const where = typeof rawName === 'string' && rawName !== '' ? `statement ${q(rawName)}` : `statement policies[${index}]`
    const before = this.errors.length
    if (!isRecord(raw)) {
      this.fail(where, 'must be a mapping with name, principals, allow, deny')
      return null
    }
    for (const k of unknownKeys(raw, STATEMENT_KEYS)) this.fail(where, `unknown key ${q(k)} (expected ${STATEMENT_KEYS.join(', ')})`)
    if (rawName === undefined) this.fail(where, 'missing "name"')
    else if (typeof rawName !== 'string' || !NAME_RE.test(rawName)) this.fail(where, `name ${q(rawName)} must be 1-128 of [A-Za-z0-9._:-], starting with a letter, digit or '_'`)
    if (raw.description !== undefined && typeof raw.description !== 'string') this.fail(where, 'description must be a string')
    const principals = this.principals(raw.principals, where)
    if (raw.allow === undefined && raw.deny === undefined) this.fail(where, 'has neither "allow" nor "deny"')
    const allow = this.lists(raw.allow, 'allow', where)
    const deny = this.lists(raw.deny, 'deny', where)
    if (this.errors.length !== before || principals === null || allow === null || deny === null) return null
    return {
      name: rawName as string,
      ...(typeof raw.description === 'string' ? { description: raw.description } : {}),
      file: this.file,
      principals,
      allow,
      deny,
    }
  }

  principals (raw: unknown, where: string): Principals | null {
    if (raw === undefined || raw === null) return {}
    if (!isRecord(raw)) {
      this.fail(where, 'principals must be a mapping with kind, groups, ids')
      return null
    }
    const before = this.errors.length
    for (const k of unknownKeys(raw, PRINCIPAL_KEYS)) this.fail(where, `principals: unknown key ${q(k)} (expected ${PRINCIPAL_KEYS.join(', ')})`)
    const out: { kinds?: Kind[], groups?: string[], ids?: string[] } = {}
    if (raw.kind !== undefined) {
      const kinds = typeof raw.kind === 'string' ? [raw.kind] : raw.kind
      if (!Array.isArray(kinds) || kinds.length === 0) {
        this.fail(where, `principals.kind must be one of ${KINDS.join(', ')} or a non-empty list of them`)
      } else {
        kinds.forEach((k: unknown, i) => {
          if (typeof k !== 'string' || !isKind(k)) this.fail(where, `principals.kind${Array.isArray(raw.kind) ? `[${i}]` : ''}: ${q(k)} is not one of ${KINDS.join(', ')}`)
        })
        out.kinds = kinds as Kind[]
      }
    }
    const list = (key: 'groups' | 'ids', ok: (v: string) => boolean, rule: string): string[] | undefined => {
      const value = raw[key]
      if (value === undefined) return undefined
      // An empty list would match nobody, which is never what someone writing it meant.
      if (!Array.isArray(value) || value.length === 0) {
        this.fail(where, `principals.${key} must be a non-empty list (omit it to match everyone)`)
        return undefined
      }
      value.forEach((v: unknown, i) => {
        if (typeof v !== 'string' || !ok(v)) this.fail(where, `principals.${key}[${i}]: ${q(v)} ${rule}`)
      })
      return value as string[]
    }
    const groups = list('groups', isValidId, "is not a group name (1-64 of [A-Za-z0-9._-], not starting with '.' or '-')")
    if (groups !== undefined) out.groups = groups
    const ids = list('ids', (v) => ID_GLOB_RE.test(v), 'is not an id glob (the id alphabet [A-Za-z0-9._-] plus * and ?)')
    if (ids !== undefined) out.ids = ids
    return this.errors.length === before ? out : null
  }

  lists (raw: unknown, effect: 'allow' | 'deny', where: string): EntryLists | null {
    const empty: Record<Action, Entry[]> = { publish: [], subscribe: [], receive: [] }
    if (raw === undefined) return empty
    if (!isRecord(raw)) {
      this.fail(where, `${effect} must be a mapping with publish, subscribe, receive`)
      return null
    }
    const before = this.errors.length
    for (const k of unknownKeys(raw, ACTIONS)) this.fail(where, `${effect}: unknown key ${q(k)} (expected ${ACTIONS.join(', ')})`)
    for (const action of ACTIONS) {
      const value = raw[action]
      if (value === undefined) continue
      if (!Array.isArray(value)) {
        this.fail(where, `${effect}.${action} must be a list of topics`)
        continue
      }
      value.forEach((e: unknown, i) => {
        const entry = this.entry(e, `${effect}.${action}[${i}]`, effect, where)
        if (entry !== null) empty[action].push(entry)
      })
    }
    // PRODUCT.md: receive defaults to the statement's subscribe list, for allow and deny alike.
    if (raw.receive === undefined) empty.receive = empty.subscribe
    return this.errors.length === before ? empty : null
  }

  entry (raw: unknown, label: string, effect: 'allow' | 'deny', where: string): Entry | null {
    const at = `${where}: ${label}`
    let topic: unknown = raw
    let retain: boolean | undefined
    let maxQos: Qos | undefined
    if (isRecord(raw)) {
      const before = this.errors.length
      for (const k of unknownKeys(raw, ENTRY_KEYS)) this.fail(at, `unknown key ${q(k)} (expected ${ENTRY_KEYS.join(', ')})`)
      topic = raw.topic
      if (topic === undefined) this.fail(at, 'missing "topic"')
      if (raw.retain !== undefined) {
        if (typeof raw.retain !== 'boolean') this.fail(at, `retain must be true or false, not ${q(raw.retain)}`)
        else retain = raw.retain
      }
      if (raw.maxQos !== undefined) {
        if (effect === 'deny') this.fail(at, 'maxQos applies only to allow entries')
        else if (raw.maxQos !== 0 && raw.maxQos !== 1 && raw.maxQos !== 2) this.fail(at, `maxQos must be 0, 1 or 2, not ${q(raw.maxQos)}`)
        else maxQos = raw.maxQos
      }
      if (this.errors.length !== before) return null
    }
    if (typeof topic !== 'string') {
      this.fail(at, `${q(topic)} is not a topic; write a string or { topic, retain?, maxQos? }`)
      return null
    }
    const parsed = parseTemplate(topic)
    if ('problem' in parsed) {
      this.fail(at, `${q(topic)}: ${parsed.problem}`)
      return null
    }
    return {
      topic,
      levels: parsed.levels,
      label,
      ...(retain === undefined ? {} : { retain }),
      ...(maxQos === undefined ? {} : { maxQos }),
    }
  }
}

function oneLineYamlError (message: string): string {
  return (message.split('\n')[0] ?? message).replace(/:\s*$/, '')
}

/** A file's text as data, or the one-line reason it is not readable as YAML/JSON. */
type Parsed = { doc: unknown } | { error: string }

function parseText (text: string, file: string): Parsed {
  if (extname(file).toLowerCase() === '.json') {
    try {
      return { doc: JSON.parse(text) }
    } catch (err) {
      return { error: `${file}: invalid JSON: ${err instanceof Error ? err.message : String(err)}` }
    }
  }
  const parsed = parseDocument(text, { uniqueKeys: true })
  const first = parsed.errors[0]
  if (first !== undefined) return { error: `${file}: invalid YAML: ${oneLineYamlError(first.message)}` }
  return { doc: parsed.toJS({ maxAliasCount: 100 }) }
}

/**
 * Above this, YAML is parsed on a worker thread by the async loader: the yaml package needs about a second
 * for 10 000 statements, and a hot reload must not stall message delivery (or revocations) that long.
 */
const OFF_THREAD_YAML_BYTES = 128 * 1024

const YAML_WORKER = `
const { parentPort, workerData } = require('node:worker_threads')
const { parseDocument } = require(workerData.yaml)
const parsed = parseDocument(workerData.text, { uniqueKeys: true })
const first = parsed.errors[0]
parentPort.postMessage(first !== undefined ? { error: first.message } : { doc: parsed.toJS({ maxAliasCount: 100 }) })
`

async function parseTextAsync (text: string, file: string): Promise<Parsed> {
  if (text.length < OFF_THREAD_YAML_BYTES || extname(file).toLowerCase() === '.json') return parseText(text, file)
  const yaml = createRequire(import.meta.url).resolve('yaml')
  const result = await new Promise<{ doc?: unknown, error?: string }>((resolve, reject) => {
    const worker = new Worker(YAML_WORKER, { eval: true, workerData: { yaml, text } })
    worker.once('message', (m: { doc?: unknown, error?: string }) => { resolve(m); void worker.terminate() })
    worker.once('error', reject)
    worker.once('exit', (code) => { reject(new Error(`YAML parser worker exited with code ${code}`)) })
  })
  return result.error !== undefined ? { error: `${file}: invalid YAML: ${oneLineYamlError(result.error)}` } : { doc: result.doc }
}

function failWith (errors: readonly string[]): never {
  const [first] = errors
  const more = errors.length > 1 ? ` (and ${errors.length - 1} more)` : ''
  throw new ZtError('ZT_BAD_POLICY', `${first ?? 'invalid policies'}${more}`, { errors: [...errors] })
}

interface SourceFile {
  readonly name: string
  readonly text: string
  readonly parsed: Parsed
}

function build (files: readonly SourceFile[]): PolicySet {
  const errors: string[] = []
  const statements: Statement[] = []
  const seen = new Map<string, string>()
  const hash = createHash('sha256')
  for (const { name, text, parsed } of files) {
    hash.update(name).update('\0').update(text).update('\0')
    if ('error' in parsed) {
      errors.push(parsed.error)
      continue
    }
    const checker = new FileChecker(name)
    const found = checker.statements(parsed.doc)
    errors.push(...checker.errors)
    for (const s of found) {
      const earlier = seen.get(s.name)
      if (earlier !== undefined) {
        errors.push(`${name}: statement ${q(s.name)}: name already used ${earlier === name ? 'earlier in this file' : `in ${earlier}`}`)
        continue
      }
      seen.set(s.name, name)
      statements.push(s)
    }
  }
  if (errors.length > 0) failWith(errors)
  return new PolicySet(statements, files.map((f) => f.name), hash.digest('hex'))
}

/**
 * Parses the text of one policy file (JSON when `fileName` ends in .json, else YAML) into a PolicySet.
 * @throws ZtError ZT_BAD_POLICY with every problem in `context.errors` (one line each), the first in the message.
 */
export function parsePolicies (text: string, fileName = 'policies.yaml'): PolicySet {
  return build([{ name: fileName, text, parsed: parseText(text, fileName) }])
}

function isPolicyFile (name: string): boolean {
  // Dotfiles are editor droppings (.#x.yaml lock files, swap files), never policy.
  return !name.startsWith('.') && POLICY_EXTENSIONS.includes(extname(name).toLowerCase())
}

function ioError (path: string, err: unknown): ZtError {
  const code = (err as { code?: string }).code
  const why = code === 'ENOENT' ? 'no such file or directory' : code === 'EACCES' ? 'permission denied' : (err instanceof Error ? err.message : String(err))
  return new ZtError('ZT_IO', `${path}: cannot read policies: ${why}`, { path }, { cause: err })
}

function notPolicyFile (path: string): ZtError {
  return new ZtError('ZT_BAD_POLICY', `${path}: not a policy file (expected ${POLICY_EXTENSIONS.join(', ')})`, { path })
}

/**
 * Loads a directory of policy files (`*.yaml`, `*.yml`, `*.json`, non-recursive, in name order; anything else is
 * ignored) or a single policy file. An empty directory gives an empty set (which denies everything):
 * whether that is acceptable is the caller's call.
 * @throws ZtError ZT_IO when the path cannot be read, ZT_BAD_POLICY when anything fails validation.
 */
export async function loadPolicies (path: string): Promise<PolicySet> {
  let isDir: boolean
  try {
    isDir = (await stat(path)).isDirectory()
  } catch (err) {
    throw ioError(path, err)
  }
  if (!isDir && !POLICY_EXTENSIONS.includes(extname(path).toLowerCase())) throw notPolicyFile(path)
  const names = isDir ? await listPolicyFiles(path) : [path]
  const files: SourceFile[] = []
  for (const name of names) {
    let text: string
    try {
      text = await readFile(name, 'utf8')
    } catch (err) {
      throw ioError(name, err)
    }
    files.push({ name, text, parsed: await parseTextAsync(text, name) })
  }
  return build(files)
}

/** `loadPolicies` without awaiting, for start-up paths that must have a set before they return. */
export function loadPoliciesSync (path: string): PolicySet {
  let isDir: boolean
  try {
    isDir = statSync(path).isDirectory()
  } catch (err) {
    throw ioError(path, err)
  }
  if (!isDir && !POLICY_EXTENSIONS.includes(extname(path).toLowerCase())) throw notPolicyFile(path)
  const names = isDir ? listPolicyFilesSync(path) : [path]
  const files: SourceFile[] = []
  for (const name of names) {
    let text: string
    try {
      text = readFileSync(name, 'utf8')
    } catch (err) {
      throw ioError(name, err)
    }
    files.push({ name, text, parsed: parseText(text, name) })
  }
  return build(files)
}

function byCodeUnit (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

async function listPolicyFiles (dir: string): Promise<string[]> {
  let names: string[]
  try {
    names = (await readdir(dir)).filter(isPolicyFile).sort(byCodeUnit)
  } catch (err) {
    throw ioError(dir, err)
  }
  const out: string[] = []
  for (const name of names) {
    // stat, not the dirent type: Kubernetes mounts ConfigMap files as symlinks.
    const full = join(dir, name)
    const st = await stat(full).catch(() => null)
    if (st?.isFile() === true) out.push(full)
  }
  return out
}

/** The policy files a directory holds, as paths joined onto `dir`, in load order. */
export function listPolicyFilesSync (dir: string): string[] {
  let names: string[]
  try {
    names = readdirSync(dir).filter(isPolicyFile).sort(byCodeUnit)
  } catch (err) {
    throw ioError(dir, err)
  }
  return names.map((name) => join(dir, name)).filter((full) => {
    try { return statSync(full).isFile() } catch { return false }
  })
}

/** The directory of the policies shipped with the package (holding default.yaml), from source or from dist/. */
export function shippedPoliciesDir (): string {
  const here = dirname(fileURLToPath(import.meta.url))
  for (const dir of [here, resolve(here, '..', '..', 'policies')]) {
    if (existsSync(join(dir, 'default.yaml'))) return dir
  }
  return here
}

/**
 * Where the policies come from: the explicit path if given, else `./policies` of `cwd` when it exists,
 * else the shipped defaults (PRODUCT.md, "Policies").
 */
export function resolvePoliciesDir (explicit?: string, cwd: string = process.cwd()): string {
  if (explicit !== undefined) return explicit
  const local = join(cwd, 'policies')
  return existsSync(local) ? local : shippedPoliciesDir()
}
