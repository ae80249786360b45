// Broker configuration: defaults, the JSON/YAML file, environment and flags merged, validated once and frozen.
import { readFileSync } from 'node:fs'
import { parse as parseYaml } from 'yaml'
import { ZtError } from '../common/errors.js'
import { DEFAULT_LIMITS, type BrokerLimits } from './limits.js'

export interface BrokerConfig {
  /** MQTT over mutual TLS. 0 picks a free port. @default 8883 */
  port: number
  /** Interface for MQTT and HTTP; null = every interface (`::` where IPv6 exists, else `0.0.0.0`). @default null */
  host: string | null
  /** Plain HTTP for /healthz and /crl. 0 picks a free port; null disables it. @default 8080 */
  httpPort: number | null
  /**
   * Admin API over mutual TLS, operator certificates only (broker/admin.ts). 0 picks a free port. Off by default:
   * it can issue certificates with the CA keys, so it is opened only on purpose. @default null (disabled)
   */
  adminPort: number | null
  /** CA home. @default $AEDES_ZT_HOME, else "./certs-dev" */
  home: string
  /** Redis for the certificate store (and, with the cluster wiring, sessions). @default $REDIS_URL, else null (files in the home) */
  redisUrl: string | null
  /** Policies directory. @default null: ./policies of the working directory if it exists, else the shipped defaults */
  policies: string | null
  identity: {
    /** Admit only serials in the CA inventory. @default true */
    requireIssuedSerial: boolean
    /** Also accept client ids `<id>:<suffix>`. @default false */
    clientIdSuffix: boolean
  }
  revocation: {
    /** Refuse new connections when the revocation mirror cannot confirm it is current for this long. @default 30000 */
    maxStalenessMs: number
  }
  cluster: {
    /**
     * With redisUrl: how often this node tells the others it is alive. A node silent for 3 heartbeats is taken for
     * dead, and a survivor publishes the Last Wills of its clients (after the policy check, never for a revoked
     * owner) within 4 more; a Redis outage longer than 3 heartbeats makes the others take this node for dead too.
     * @default 60000
     */
    heartbeatMs: number
  }
  limits: BrokerLimits
  /** pino level. @default $LOG_LEVEL, else "info" */
  logLevel: string
}

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const

export function defaultConfig (): BrokerConfig {
  return {
    port: 8883,
    host: null,
    httpPort: 8080,
    adminPort: null,
    home: './certs-dev',
    redisUrl: null,
    policies: null,
    identity: { requireIssuedSerial: true, clientIdSuffix: false },
    revocation: { maxStalenessMs: 30_000 },
    cluster: { heartbeatMs: 60_000 },
    limits: { ...DEFAULT_LIMITS },
    logLevel: 'info',
  }
}

/** A config file, env or flags as a nested partial; validated by resolveConfig. */
export type ConfigInput = Record<string, unknown>

type Check = (value: unknown) => string | null

const port: Check = (v) => Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 65535 ? null : 'must be an integer port 0-65535'
const nullablePort: Check = (v) => v === null ? null : port(v)
const nonEmpty: Check = (v) => typeof v === 'string' && v.trim() !== '' ? null : 'must be a non-empty string'
const nullableString: Check = (v) => v === null ? null : nonEmpty(v)
const bool: Check = (v) => typeof v === 'boolean' ? null : 'must be true or false'
const positive = (min: number, max: number): Check => (v) =>
  Number.isInteger(v) && (v as number) >= min && (v as number) <= max ? null : `must be an integer from ${min} to ${max}`
const redisUrl: Check = (v) => {
  if (v === null) return null
  if (typeof v !== 'string' || !/^rediss?:\/\//.test(v)) return 'must be a redis:// or rediss:// URL'
  try { new URL(v); return null } catch { return 'must be a redis:// or rediss:// URL' } // eslint-disable-line no-new
}
const logLevel: Check = (v) => typeof v === 'string' && (LOG_LEVELS as readonly string[]).includes(v) ? null : `must be one of ${LOG_LEVELS.join(', ')}`

const SCHEMA: Record<string, Check | Record<string, Check>> = {
  port,
  host: nullableString,
  httpPort: nullablePort,
  adminPort: nullablePort,
  home: nonEmpty,
  redisUrl,
  policies: nullableString,
  identity: { requireIssuedSerial: bool, clientIdSuffix: bool },
  revocation: { maxStalenessMs: positive(100, 86_400_000) },
  cluster: { heartbeatMs: positive(100, 3_600_000) },
  limits: {
    handshakeTimeoutMs: positive(100, 600_000),
    connectTimeoutMs: positive(100, 600_000),
    firstPacketBytes: positive(64, 16 * 1024 * 1024),
    maxPacketBytes: positive(64, 256 * 1024 * 1024),
    maxTopicBytes: positive(1, 65_535),
    // Aedes' router cannot go beyond 100 levels.
    maxTopicLevels: positive(1, 100),
  },
  logLevel,
}

function isPlainObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

/** Validates one source and merges it into `into`. `origin` names the source in error messages. */
function mergeChecked (into: BrokerConfig, input: ConfigInput, origin: string): void {
  if (!isPlainObject(input)) throw new ZtError('ZT_BAD_CONFIG', `config ${origin}: must be an object of settings`, { origin })
  const target = into as unknown as Record<string, unknown>
  for (const [key, value] of Object.entries(input)) {
    const rule = SCHEMA[key]
    if (rule === undefined) throw new ZtError('ZT_BAD_CONFIG', `config ${origin}: unknown key "${key}"; known keys: ${Object.keys(SCHEMA).join(', ')}`, { origin, key })
    if (typeof rule === 'function') {
      const problem = rule(value)
      if (problem !== null) throw new ZtError('ZT_BAD_CONFIG', `config ${origin}: ${key} ${JSON.stringify(value)} ${problem}`, { origin, key })
      target[key] = value
      continue
    }
    if (!isPlainObject(value)) throw new ZtError('ZT_BAD_CONFIG', `config ${origin}: ${key} must be an object with keys ${Object.keys(rule).join(', ')}`, { origin, key })
    const section = target[key] as Record<string, unknown>
    for (const [sub, subValue] of Object.entries(value)) {
      const check = rule[sub]
      if (check === undefined) throw new ZtError('ZT_BAD_CONFIG', `config ${origin}: unknown key "${key}.${sub}"; known keys: ${Object.keys(rule).map((k) => `${key}.${k}`).join(', ')}`, { origin, key: `${key}.${sub}` })
      const problem = check(subValue)
      if (problem !== null) throw new ZtError('ZT_BAD_CONFIG', `config ${origin}: ${key}.${sub} ${JSON.stringify(subValue)} ${problem}`, { origin, key: `${key}.${sub}` })
      section[sub] = subValue
    }
  }
}

/** Reads a JSON or YAML config file (by extension; YAML otherwise, which also reads JSON). */
export function readConfigFile (file: string): ConfigInput {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new ZtError('ZT_BAD_CONFIG', `config ${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { file })
  }
  let parsed: unknown
  try {
    parsed = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text)
  } catch (err) {
    throw new ZtError('ZT_BAD_CONFIG', `config ${file}: not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0] ?? ''}`, { file })
  }
  if (parsed === null || parsed === undefined) return {}
  if (!isPlainObject(parsed)) throw new ZtError('ZT_BAD_CONFIG', `config ${file}: the top level must be a mapping of settings`, { file })
  return parsed
}

/** Settings from the environment: REDIS_URL, AEDES_ZT_HOME, LOG_LEVEL (AEDES_ZT_CA_PASSPHRASE is only read by the CA). */
export function configFromEnv (env: NodeJS.ProcessEnv): ConfigInput {
  const out: ConfigInput = {}
  if (env.REDIS_URL !== undefined && env.REDIS_URL !== '') out.redisUrl = env.REDIS_URL
  if (env.AEDES_ZT_HOME !== undefined && env.AEDES_ZT_HOME !== '') out.home = env.AEDES_ZT_HOME
  if (env.LOG_LEVEL !== undefined && env.LOG_LEVEL !== '') out.logLevel = env.LOG_LEVEL
  return out
}

function deepFreeze<T> (o: T): T {
  if (typeof o === 'object' && o !== null) {
    for (const v of Object.values(o)) deepFreeze(v)
    Object.freeze(o)
  }
  return o
}

export interface ConfigSources {
  /** Path of a JSON or YAML config file. */
  file?: string | undefined
  env?: NodeJS.ProcessEnv
  /** Settings given directly (command-line flags, or a library caller's object). Win over everything else. */
  overrides?: ConfigInput
}

/**
 * Defaults, then the file, then the environment, then overrides: each validated as it is merged (unknown key or bad
 * value → ZtError ZT_BAD_CONFIG with one line naming the source, the key and the value). The result is frozen.
 */
export function resolveConfig (sources: ConfigSources = {}): Readonly<BrokerConfig> {
  const config = defaultConfig()
  if (sources.file !== undefined) mergeChecked(config, readConfigFile(sources.file), sources.file)
  mergeChecked(config, configFromEnv(sources.env ?? {}), 'environment')
  if (sources.overrides !== undefined) mergeChecked(config, sources.overrides, 'options')
  if (config.limits.maxPacketBytes < config.limits.firstPacketBytes) {
    // Otherwise a CONNECT could be legal before authentication and illegal after: confusing and pointless.
    throw new ZtError('ZT_BAD_CONFIG', `config: limits.maxPacketBytes ${config.limits.maxPacketBytes} must be at least limits.firstPacketBytes ${config.limits.firstPacketBytes}`)
  }
  return deepFreeze(config)
}
