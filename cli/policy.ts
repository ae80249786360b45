// `aedes-zt policy check` and `policy explain`: thin adapters from arguments to the policy engine in policies/.
import { isZtError, ZtError } from '../common/errors.js'
import { canonicalSerial, checkGroup, checkId, checkKind } from '../common/ids.js'
import { describeDecision, explain, type Request } from '../policies/engine.js'
import { loadPolicies, POLICY_EXTENSIONS, resolvePoliciesDir } from '../policies/load.js'
import type { Identity, Qos } from '../policies/model.js'
import type { PolicySet } from '../policies/set.js'
import type { Command, CommandContext } from './main.js'

function plural (n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

function noFiles (path: string): ZtError {
  return new ZtError('ZT_BAD_POLICY', `${path}: no policy files (${POLICY_EXTENSIONS.map((e) => `*${e}`).join(', ')})`, { path })
}

/** Bad input is exit 2 by the CLI's convention; id and kind errors carry their own codes, so re-badge them. */
function asArgument<T> (fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    if (isZtError(err)) throw new ZtError('ZT_BAD_ARGUMENT', err.message, { ...err.context })
    throw err
  }
}

const check: Command = {
  path: ['policy', 'check'],
  usage: 'policy check [PATH]',
  options: {},
  positionals: [0, 1],
  async run (ctx: CommandContext) {
    const path = ctx.positionals[0] ?? 'policies'
    let set: PolicySet
    try {
      set = await loadPolicies(path)
    } catch (err) {
      // Every problem on its own line, like a linter, so one run shows them all.
      const errors = isZtError(err) ? err.context.errors : undefined
      if (!Array.isArray(errors)) throw err
      for (const line of errors) ctx.stderr.write(`${String(line)}\n`)
      return 1
    }
    if (set.files.length === 0) throw noFiles(path)
    ctx.stdout.write(`ok: ${plural(set.statements.length, 'statement')} in ${plural(set.files.length, 'file')}\n`)
    return 0
  },
}

function single (value: unknown): string | undefined {
  return typeof value === 'string' ? value : undefined
}

const explainCommand: Command = {
  path: ['policy', 'explain'],
  usage: 'policy explain <id> [--policies DIR] [--kind K] [--group G ...] [--serial S] (--publish TOPIC | --subscribe FILTER | --receive TOPIC) [--qos N] [--retain] [--json]',
  options: {
    policies: { type: 'string' },
    kind: { type: 'string' },
    group: { type: 'string', multiple: true },
    serial: { type: 'string' },
    publish: { type: 'string' },
    subscribe: { type: 'string' },
    receive: { type: 'string' },
    qos: { type: 'string' },
    retain: { type: 'boolean' },
    json: { type: 'boolean' },
  },
  positionals: [1, 1],
  async run (ctx: CommandContext) {
    const v = ctx.values
    const id = asArgument(() => checkId(ctx.positionals[0] ?? '', 'policy explain'))
    const kind = asArgument(() => checkKind(single(v.kind) ?? 'device', 'policy explain'))
    const groups = (Array.isArray(v.group) ? v.group : []).map((g) => asArgument(() => checkGroup(g, 'policy explain')))
    let serial: string | undefined
    if (typeof v.serial === 'string') {
      const s = canonicalSerial(v.serial)
      if (s === null) throw new ZtError('ZT_BAD_ARGUMENT', `policy explain: serial ${JSON.stringify(v.serial)} is not hexadecimal`)
      serial = s
    }
    const qosText = single(v.qos) ?? '0'
    if (!/^[012]$/.test(qosText)) throw new ZtError('ZT_BAD_ARGUMENT', `policy explain: --qos ${JSON.stringify(qosText)} must be 0, 1 or 2`)
    const qos = Number(qosText) as Qos
    const retain = v.retain === true
    const given = (['publish', 'subscribe', 'receive'] as const).filter((a) => typeof v[a] === 'string')
    if (given.length !== 1) throw new ZtError('ZT_BAD_ARGUMENT', 'policy explain: give exactly one of --publish TOPIC, --subscribe FILTER, --receive TOPIC')
    const action = given[0] as 'publish' | 'subscribe' | 'receive'
    const topic = single(v[action]) as string
    if (action === 'subscribe' && retain) throw new ZtError('ZT_BAD_ARGUMENT', 'policy explain: --retain applies to --publish and --receive, not --subscribe')
    const request: Request = action === 'subscribe' ? { action, filter: topic, qos } : { action, topic, qos, retain }

    const dir = resolvePoliciesDir(single(v.policies))
    const set = await loadPolicies(dir)
    if (set.files.length === 0) throw noFiles(dir)
    const identity: Identity = { id, kind, groups, ...(serial === undefined ? {} : { serial }) }
    const { decision, statements } = explain(set, identity, request)

    if (v.json === true) {
      ctx.stdout.write(JSON.stringify({
        ...decision,
        request: action === 'subscribe' ? { action, filter: topic, qos } : { action, topic, qos, retain },
        identity: { id, kind, groups, serial: serial ?? null },
        statements,
        policies: { path: dir, files: set.files.length, statements: set.statements.length },
      }, null, 2) + '\n')
      return 0
    }
    const lines = [
      describeDecision(decision),
      `request:    ${action} ${JSON.stringify(topic)} qos ${qos}${action === 'subscribe' ? '' : ` retain ${String(retain)}`}`,
      `identity:   ${kind} ${JSON.stringify(id)}, groups [${groups.join(', ')}], serial ${serial ?? '(none: ${serial} entries vanish)'}`,
      `statements: ${statements.length === 0 ? '(none apply to this identity)' : statements.join(', ')}`,
      `policies:   ${dir} (${plural(set.statements.length, 'statement')} in ${plural(set.files.length, 'file')})`,
    ]
    ctx.stdout.write(lines.join('\n') + '\n')
    return 0
  },
}

export const commands: Command[] = [check, explainCommand]
