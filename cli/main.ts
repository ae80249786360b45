// The `aedes-zt` command line: global options, dispatch to command modules, one-line errors and exit codes.
// No Reflect polyfill here: it is only for @peculiar/x509, which the modules that use it load along with it.
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { oneLine, ZtError } from '../common/errors.js'

type OptionSpec = NonNullable<ParseArgsConfig['options']>

export interface CommandContext {
  /** CA home: --home, else $AEDES_ZT_HOME, else ./certs-dev. */
  home: string
  /** Whether the home came from the default (./certs-dev): only that one may be a dev home made on the fly. */
  homeIsDefault: boolean
  /** Redis URL: --redis, else $REDIS_URL, else undefined (file store). */
  redisUrl: string | undefined
  values: Record<string, string | boolean | string[] | undefined>
  positionals: string[]
  stdout: NodeJS.WritableStream
  stderr: NodeJS.WritableStream
  env: NodeJS.ProcessEnv
}

export interface Command {
  /** Words that select the command, e.g. ['cert', 'issue']. */
  path: string[]
  usage: string
  options: OptionSpec
  /** Positional arguments accepted: [min, max]. */
  positionals?: [number, number]
  run (ctx: CommandContext): Promise<number | void>
}

const GLOBAL_OPTIONS: OptionSpec = {
  home: { type: 'string' },
  redis: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
}

type CommandModule = () => Promise<{ commands: Command[] }>

// Command modules are loaded on demand: each pulls in its own dependencies (the CA, the policy engine and its YAML
// parser, the broker and @peculiar/x509), and a CLI run pays start-up for one of them only. The CA module itself
// loads @peculiar/x509 only for `ca init` and `crl`.
const CA: CommandModule = async () => await import('./ca.js')
const POLICY: CommandModule = async () => await import('./policy.js')
const BROKER: CommandModule = async () => await import('./broker.js')

/** Which module holds the commands starting with a word; a word not listed (or not found there) loads them all. */
const MODULE_OF: Readonly<Record<string, CommandModule>> = { ca: CA, cert: CA, crl: CA, policy: POLICY, broker: BROKER }

/** Every command, in the order of the usage text. */
async function allCommands (): Promise<Command[]> {
  const modules = await Promise.all([CA(), POLICY(), BROKER()])
  return modules.flatMap((m) => m.commands)
}

function usage (registry: readonly Command[]): string {
  return ['usage: aedes-zt [--home DIR] <command>', '', ...registry.map((c) => `  aedes-zt ${c.usage}`)].join('\n') + '\n'
}

/** Indexes of the words of argv that are not options: global options may come before the command words. */
function wordIndexes (argv: string[]): number[] {
  const words: number[] = []
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? ''
    if (a === '--home' || a === '--redis') { i++; continue }
    if (a.startsWith('-')) continue
    words.push(i)
  }
  return words
}

/** The command argv names, loading only the module its first word points to when that is enough. */
async function resolveCommand (argv: string[]): Promise<{ command: Command, rest: string[] } | null> {
  const first = argv[wordIndexes(argv)[0] ?? -1]
  const module = first !== undefined && Object.hasOwn(MODULE_OF, first) ? MODULE_OF[first] : undefined
  if (module !== undefined) {
    const found = findCommand(argv, (await module()).commands)
    if (found !== null) return found
  }
  return findCommand(argv, await allCommands())
}

function findCommand (argv: string[], registry: readonly Command[]): { command: Command, rest: string[] } | null {
  const words = wordIndexes(argv)
  let best: Command | null = null
  for (const c of registry) {
    if (c.path.every((w, k) => words[k] !== undefined && argv[words[k] as number] === w) && (best === null || c.path.length > best.path.length)) best = c
  }
  if (best === null) return null
  const drop = new Set(words.slice(0, best.path.length))
  return { command: best, rest: argv.filter((_, i) => !drop.has(i)) }
}

export interface MainIo {
  stdout?: NodeJS.WritableStream
  stderr?: NodeJS.WritableStream
  env?: NodeJS.ProcessEnv
}

/** Runs the CLI; resolves to the exit code. Never throws for user input: prints one line on stderr instead. */
export async function main (argv: string[], io: MainIo = {}): Promise<number> {
  const stdout = io.stdout ?? process.stdout
  const stderr = io.stderr ?? process.stderr
  const env = io.env ?? process.env
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    stdout.write(usage(await allCommands()))
    return argv.length === 0 ? 2 : 0
  }
  const found = await resolveCommand(argv)
  if (found === null) {
    stderr.write(`aedes-zt: unknown command "${argv.filter((a) => !a.startsWith('-')).slice(0, 2).join(' ')}"; run aedes-zt --help\n`)
    return 2
  }
  const { command, rest } = found
  const name = command.path.join(' ')
  try {
    let parsed
    try {
      parsed = parseArgs({ args: rest, options: { ...GLOBAL_OPTIONS, ...command.options }, allowPositionals: true, strict: true })
    } catch (err) {
      throw new ZtError('ZT_BAD_ARGUMENT', `${name}: ${oneLine(err)}`)
    }
    const { values, positionals } = parsed
    if (values.help === true) {
      stdout.write(`usage: aedes-zt ${command.usage}\n`)
      return 0
    }
    const [min, max] = command.positionals ?? [0, 0]
    if (positionals.length < min || positionals.length > max) {
      throw new ZtError('ZT_BAD_ARGUMENT', `${name}: expected ${min === max ? min : `${min} to ${max}`} argument(s), got ${positionals.length}; usage: aedes-zt ${command.usage}`)
    }
    const homeOpt = typeof values.home === 'string' ? values.home : undefined
    // An empty --home would silently mean the current directory.
    if (homeOpt === '') throw new ZtError('ZT_BAD_ARGUMENT', `${name}: --home needs a directory`)
    const envHome = env.AEDES_ZT_HOME !== undefined && env.AEDES_ZT_HOME !== '' ? env.AEDES_ZT_HOME : undefined
    const redisOpt = typeof values.redis === 'string' ? values.redis : (env.REDIS_URL !== undefined && env.REDIS_URL !== '' ? env.REDIS_URL : undefined)
    const code = await command.run({
      home: homeOpt ?? envHome ?? './certs-dev',
      homeIsDefault: homeOpt === undefined && envHome === undefined,
      redisUrl: redisOpt,
      values: values as CommandContext['values'],
      positionals,
      stdout,
      stderr,
      env,
    })
    return code ?? 0
  } catch (err) {
    stderr.write(`aedes-zt ${name}: ${oneLine(err).replace(new RegExp(`^${name}: `), '')}\n`)
    if (!(err instanceof ZtError) && env.AEDES_ZT_DEBUG === '1' && err instanceof Error) stderr.write(`${err.stack ?? ''}\n`)
    return err instanceof ZtError && err.code === 'ZT_BAD_ARGUMENT' ? 2 : 1
  }
}
