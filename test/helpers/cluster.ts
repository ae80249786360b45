// Test plumbing for clusters: broker nodes as child processes of the real CLI, their JSON logs, and CLI runs.
import { spawn, type ChildProcess } from 'node:child_process'
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { LogLine } from './mqtt.js'

export const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/aedes-zt.js')

/** What bin/aedes-zt.js runs (dist/); a stale build would test yesterday's code. */
export async function assertBuilt (): Promise<void> {
  const root = path.resolve(path.dirname(BIN), '..')
  const [src, built] = await Promise.all([
    fs.stat(path.join(root, 'broker', 'server.ts')),
    fs.stat(path.join(root, 'dist', 'broker', 'server.js')).catch(() => null),
  ])
  if (built === null || built.mtimeMs < src.mtimeMs) throw new Error('dist/ is missing or older than the sources: run `npm run build` (npm test does)')
}

export interface NodeOptions {
  name: string
  home: string
  redisUrl: string
  policies: string
  /** Written to a JSON config file for --config. */
  config?: Record<string, unknown>
  /** Extra environment (AEDES_ZT_CA_PASSPHRASE makes the node a CRL signer). */
  env?: NodeJS.ProcessEnv
  dir: string
}

export interface BrokerNode {
  readonly name: string
  readonly child: ChildProcess
  readonly port: number
  readonly httpPort: number
  readonly url: string
  readonly logs: LogLine[]
  /** Resolves with the first log line (already logged or to come) matching pred. */
  waitFor (pred: (l: LogLine) => boolean, timeoutMs?: number, what?: string): Promise<LogLine>
  healthz (): Promise<number>
  kill (signal?: NodeJS.Signals): Promise<void>
  readonly exited: Promise<void>
}

/** Environment for children: nothing from the developer's shell that could change what the CLI does. */
function childEnv (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: 'info', ...extra }
  return env
}

/** `node bin/aedes-zt.js broker ...` on ports 0; resolves once its broker.started line gives the bound ports. */
export async function startNode (o: NodeOptions): Promise<BrokerNode> {
  const args = [BIN, '--home', o.home, '--redis', o.redisUrl, 'broker', '--port', '0', '--http-port', '0', '--host', '127.0.0.1', '--policies', o.policies]
  if (o.config !== undefined) {
    const file = path.join(o.dir, `${o.name}.json`)
    await fs.writeFile(file, JSON.stringify(o.config))
    args.push('--config', file)
  }
  const child = spawn(process.execPath, args, { env: childEnv(o.env), stdio: ['ignore', 'pipe', 'pipe'] })
  const logs: LogLine[] = []
  const waiters = new Set<() => void>()
  let pending = ''
  let stderr = ''
  child.stdout?.on('data', (d: Buffer) => {
    pending += d.toString('utf8')
    let nl
    while ((nl = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, nl)
      pending = pending.slice(nl + 1)
      if (line.startsWith('{')) {
        try { logs.push(JSON.parse(line) as LogLine) } catch { /* a partial or foreign line */ }
      }
    }
    for (const w of [...waiters]) w()
  })
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString('utf8') })
  const exited = new Promise<void>((resolve) => { child.once('exit', () => { for (const w of [...waiters]) w(); resolve() }) })

  const waitFor = async (pred: (l: LogLine) => boolean, timeoutMs = 15_000, what = 'a log line'): Promise<LogLine> => {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const hit = logs.find(pred)
      if (hit !== undefined) return hit
      const left = deadline - Date.now()
      if (left <= 0 || child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`${o.name}: no ${what} within ${timeoutMs} ms; last events: ${logs.slice(-8).map((l) => `${l.event ?? '?'}:${l.reason ?? ''}`).join(', ')}${stderr === '' ? '' : `; stderr: ${stderr.slice(0, 500)}`}`)
      }
      await new Promise<void>((resolve) => {
        const w = (): void => { clearTimeout(t); waiters.delete(w); resolve() }
        const t = setTimeout(w, Math.min(left, 200))
        waiters.add(w)
      })
    }
  }
  let started: LogLine
  try {
    started = await waitFor((l) => l.event === 'broker.started', 30_000, 'broker.started')
  } catch (err) {
    child.kill('SIGKILL')
    throw err
  }
  const port = started.port as number
  const httpPort = started.httpPort as number
  return {
    name: o.name,
    child,
    port,
    httpPort,
    url: `mqtts://127.0.0.1:${port}`,
    logs,
    waitFor,
    exited,
    async healthz () {
      try {
        return (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).status
      } catch {
        return 0
      }
    },
    async kill (signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill(signal)
      const t = setTimeout(() => { child.kill('SIGKILL') }, 10_000)
      await exited
      clearTimeout(t)
    },
  }
}

export interface CliRun { code: number, stdout: string, stderr: string }

/** One `aedes-zt` command, as an operator would type it. */
export async function cli (args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  const child = spawn(process.execPath, [BIN, ...args], { env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString('utf8') })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString('utf8') })
  const code = await new Promise<number>((resolve) => { child.once('exit', (c) => { resolve(c ?? 1) }) })
  return { code, stdout, stderr }
}
