// Workload "issuance": certificates per second from CSRs, `aedes-zt cert issue-bulk` against a shell loop of
// `openssl x509 -req`. Runs bench/issuance.mjs (which owns the measurement) pinned to the broker CPU: one core.
import path from 'node:path'
import { CPUS, runPinned } from '../lib/proc.mjs'
import { childEnv } from '../lib/targets.mjs'

export const name = 'issuance'
export const title = 'Issuance: certificates per second from CSRs'
export const targets = ['zt', 'openssl']

export function describe (o) {
  return `bench/issuance.mjs on one core (taskset -c ${CPUS.broker}): ${o.issuanceCount} EC P-256 CSRs issued by \`aedes-zt cert issue-bulk\` ` +
    '(a fresh process: start-up, CA key decryption, CSR verification, signing, inventory, one PEM file per certificate) ' +
    `and by the library call it wraps; against a shell loop of \`openssl x509 -req\` (signing only, same profile) on the first ${o.opensslCount} CSRs.`
}

export const metrics = {
  certsPerSec: { label: 'certificates/s (cert issue-bulk CLI vs openssl loop)', unit: '/s', better: 'higher', digits: 0 },
  libCertsPerSec: { label: 'certificates/s (issueBulk library call)', unit: '/s', better: 'higher', digits: 0 },
  seconds: { label: 'wall time for the batch (CLI)', unit: 's', better: 'lower', digits: 2, noRatio: true },
}

export const goals = [
  { metric: 'certsPerSec', of: 'zt', min: 1000, text: 'at least 1 000 certificates per second from CSRs on one core (cert issue-bulk)' },
]

export async function runAll (ctx) {
  const o = ctx.opts
  const { stdout } = await runPinned(CPUS.broker, process.execPath, [path.join(ctx.root, 'bench/issuance.mjs'), '--count', String(o.issuanceCount), '--openssl', String(o.opensslCount)], { cwd: ctx.root, env: childEnv(), timeoutMs: 600_000 })
  const r = JSON.parse(stdout.trim().split('\n').pop())
  return {
    byTarget: {
      zt: { certsPerSec: r.issueBulkCli.certsPerSecond, libCertsPerSec: r.issueBulkLibrary.certsPerSecond, seconds: r.issueBulkCli.seconds },
      openssl: { certsPerSec: r.opensslLoop.certsPerSecond, seconds: r.opensslLoop.seconds * (r.count / r.opensslLoop.count) },
    },
    notes: ['openssl figures: a shell loop over a subset, extrapolated per certificate (its wall time is scaled to the full batch).'],
  }
}
