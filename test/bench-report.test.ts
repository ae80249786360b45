// The bench's arithmetic and verdicts (bench/lib): what the published tables and "missed by" lines are computed from.
import { readdirSync } from 'node:fs'
import { describe, expect, test } from 'vitest'

interface Spread { median: number, min: number, max: number, n: number }
interface Metric { label: string, unit: string, better?: 'lower' | 'higher', digits?: number }
interface Goal { metric: string, of?: string, vs?: string | { target: string, metric: string }, maxRatio?: number, below?: number, max?: number, min?: number, text: string }
interface Workload { name: string, title: string, targets: string[], metrics: Record<string, Metric>, goals?: Goal[] }
interface Verdict { met: boolean | null, detail: string, ratio?: number }
interface Summary { stats: Record<string, Record<string, Spread>>, ratios: Record<string, Record<string, number>>, verdicts: Verdict[] }

// The bench is plain JavaScript (it runs without a build); imported by URL so the type checker does not look for types.
const lib = (file: string): string => new URL(`../bench/lib/${file}`, import.meta.url).href
const { percentile, spread } = await import(lib('stats.mjs')) as { percentile (v: number[], p: number): number, spread (v: unknown[]): Spread }
const { summarize, workloadMarkdown } = await import(lib('report.mjs')) as {
  summarize (w: Workload, raw: Record<string, unknown[]>): Summary
  workloadMarkdown (w: Workload, s: Summary, o: { runs: number, quick: boolean, description: string }): string
}

describe('stats', () => {
  test('spread: median of odd and even counts, min and max; a failed run (no number) counts for nothing', () => {
    expect(spread([3, 1, 2])).toEqual({ median: 2, min: 1, max: 3, n: 3 })
    expect(spread([4, 1, 3, 2])).toEqual({ median: 2.5, min: 1, max: 4, n: 4 })
    expect(spread([5, undefined, Number.NaN, 7, null])).toEqual({ median: 6, min: 5, max: 7, n: 2 })
    expect(spread([]).n).toBe(0)
    expect(spread([]).median).toBeNaN()
  })

  test('percentile is nearest-rank', () => {
    const v = Array.from({ length: 100 }, (_, i) => 100 - i) // 100..1, unsorted on purpose
    expect(percentile(v, 50)).toBe(50)
    expect(percentile(v, 99)).toBe(99)
    expect(percentile(v, 100)).toBe(100)
    expect(percentile([7], 99)).toBe(7)
    expect(percentile([], 50)).toBeNaN()
  })
})

describe('summarize and the verdicts', () => {
  const workload: Workload = {
    name: 'w',
    title: 'W',
    targets: ['zt', 'floor'],
    metrics: {
      cpu: { label: 'CPU per unit', unit: 'ms', better: 'lower', digits: 2 },
      rate: { label: 'rate', unit: '/s', better: 'higher', digits: 0 },
    },
    goals: [
      { metric: 'cpu', of: 'zt', vs: 'floor', maxRatio: 1.05, text: 'CPU ≤ 1.05× floor' },
      { metric: 'rate', of: 'zt', min: 1000, text: 'rate ≥ 1000/s' },
    ],
  }

  test('ratios are of medians; a missed ratio target says by how much', () => {
    const s = summarize(workload, {
      zt: [{ cpu: 2.2, rate: 900 }, { cpu: 2.0, rate: 950 }, { cpu: 2.4, rate: 800 }],
      floor: [{ cpu: 2.0 }, { cpu: 1.8 }, { cpu: 2.2 }],
    })
    expect(s.stats.cpu?.zt).toEqual({ median: 2.2, min: 2.0, max: 2.4, n: 3 })
    expect(s.ratios.cpu?.floor).toBeCloseTo(1.1, 10)
    const [cpu, rate] = s.verdicts
    expect(cpu?.met).toBe(false)
    expect(cpu?.detail).toMatch(/^missed by 5%: 2\.20 ms = 1\.10× node:tls floor/)
    expect(rate?.met).toBe(false)
    expect(rate?.detail).toMatch(/^missed by 100 \/s \(10% short\)/)
    const md = workloadMarkdown(workload, s, { runs: 3, quick: false, description: 'd' })
    expect(md).toContain('| CPU per unit (ms) ↓ | 2.20 (2.00–2.40) | 2.00 (1.80–2.20) | 1.10× |')
    expect(md).toContain('- **MISSED**: CPU ≤ 1.05× floor')
  })

  test('a met target is reported as met; a missing figure is not judged rather than met', () => {
    const met = summarize(workload, { zt: [{ cpu: 2.0, rate: 1200 }], floor: [{ cpu: 2.0 }] })
    expect(met.verdicts.map((v) => v.met)).toEqual([true, true])
    const unmeasured = summarize(workload, { zt: [{ cpu: 2.0 }], floor: [] })
    expect(unmeasured.verdicts.map((v) => v.met)).toEqual([null, null])
    expect(workloadMarkdown(workload, unmeasured, { runs: 1, quick: true, description: 'd' })).toContain('- not judged: CPU ≤ 1.05× floor')
  })
})

test('every workload\'s targets name metrics and servers it measures', async () => {
  const dir = new URL('../bench/workloads/', import.meta.url)
  const files = readdirSync(dir).filter((f) => f.endsWith('.mjs'))
  expect(files.length).toBeGreaterThanOrEqual(6)
  for (const file of files) {
    const w = await import(new URL(file, dir).href) as Workload
    for (const g of w.goals ?? []) {
      expect(w.metrics, `${file}: goal "${g.text}"`).toHaveProperty(g.metric)
      expect(w.targets, `${file}: goal "${g.text}"`).toContain(g.of ?? 'zt')
      if (g.vs !== undefined) {
        const vs = typeof g.vs === 'string' ? { target: g.vs, metric: g.metric } : g.vs
        expect(w.targets, `${file}: goal "${g.text}"`).toContain(vs.target)
        expect(w.metrics, `${file}: goal "${g.text}"`).toHaveProperty(vs.metric)
      }
    }
  }
})
