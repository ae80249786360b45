// Order statistics for latency samples and for the spread of a metric over runs.

/** Nearest-rank percentile (p in 0..100) of numbers; NaN for an empty sample. */
export function percentile (values, p) {
  if (values.length === 0) return NaN
  const sorted = Float64Array.from(values).sort()
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank]
}

/** Median, min and max of finite values (a run that failed contributes nothing). */
export function spread (values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b)
  if (v.length === 0) return { median: NaN, min: NaN, max: NaN, n: 0 }
  const mid = v.length >> 1
  const median = v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2
  return { median, min: v[0], max: v[v.length - 1], n: v.length }
}

/** Appends numbers to a growable Float64Array (latency samples without boxing). */
export class Samples {
  constructor (initial = 1024) {
    this.data = new Float64Array(initial)
    this.length = 0
  }

  push (x) {
    if (this.length === this.data.length) {
      const next = new Float64Array(this.data.length * 2)
      next.set(this.data)
      this.data = next
    }
    this.data[this.length++] = x
  }

  values () {
    return this.data.subarray(0, this.length)
  }

  p (q) {
    return percentile(this.values(), q)
  }
}
