/**
 * Time-series charts with uPlot: one line per numeric field of the values (nested keys
 * flattened as `a.b`, array items as `list.0`). New fields add a line; old points scroll
 * out past `maxPoints`.
 */
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { h } from './dom.js';

const COLORS = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d'];
/** Lines one chart draws at most (beyond that the fields are listed, not drawn). */
const MAX_SERIES = 16;
const MAX_DEPTH = 8;

/** The numeric fields of a value, flattened: `{a: {b: 1}, c: [2]}` → a.b = 1, c.0 = 2. */
export function numericFields(value: unknown, limit = MAX_SERIES): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (v: unknown, path: string, depth: number) => {
    if (out.size >= limit) return;
    if (typeof v === 'number') {
      if (Number.isFinite(v)) out.set(path || 'value', v);
    } else if (typeof v === 'object' && v !== null && depth < MAX_DEPTH) {
      const entries = Array.isArray(v) ? v.map((x, i) => [String(i), x] as const) : Object.entries(v);
      for (const [k, x] of entries) walk(x, path ? `${path}.${k}` : k, depth + 1);
    }
  };
  walk(value, '', 0);
  return out;
}

/** Width of the y axis: room for its longest tick label. */
function axisWidth(self: uPlot, values: string[] | null, axisIdx: number, cycleNum: number): number {
  // After two layout passes keep the size, so that it cannot oscillate.
  const previous = (self.axes[axisIdx] as { _size?: number } | undefined)?._size;
  if (cycleNum > 1 && previous) return previous;
  const longest = (values ?? []).reduce((n, v) => Math.max(n, String(v).length), 0);
  return Math.max(40, Math.ceil(longest * 7.5) + 24);
}

export class TimeChart {
  private plot: uPlot | undefined;
  private readonly keys: string[] = [];
  private readonly xs: number[] = [];
  private readonly ys: Array<Array<number | null>> = [];
  private frame = 0;
  private readonly resize: ResizeObserver;
  readonly el: HTMLElement;
  private readonly empty: HTMLElement;

  constructor(
    private readonly options: { maxPoints?: number; height?: number; testid: string; emptyText?: string },
  ) {
    this.empty = h('div', { class: 'chart-empty' }, options.emptyText ?? 'No numeric data yet');
    this.el = h('div', { class: 'chart', testid: options.testid }, this.empty);
    this.resize = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: this.options.height ?? 260 });
    });
    this.resize.observe(this.el);
  }

  /** Points held (x values). */
  get points(): number {
    return this.xs.length;
  }

  get fields(): readonly string[] {
    return this.keys;
  }

  private width(): number {
    return Math.max(240, this.el.clientWidth || 600);
  }

  /** Adds one point (time in ms) with the numeric fields of `value`. */
  push(tsMs: number, value: unknown): void {
    const fields = numericFields(value);
    let added = false;
    for (const k of fields.keys()) {
      if (!this.keys.includes(k) && this.keys.length < MAX_SERIES) {
        this.keys.push(k);
        this.ys.push(new Array<number | null>(this.xs.length).fill(null));
        added = true;
      }
    }
    this.xs.push(tsMs / 1000);
    this.keys.forEach((k, i) => {
      this.ys[i]?.push(fields.get(k) ?? null);
    });
    const max = this.options.maxPoints ?? 600;
    if (this.xs.length > max) {
      const drop = this.xs.length - max;
      this.xs.splice(0, drop);
      for (const y of this.ys) y.splice(0, drop);
    }
    if (added) this.rebuild();
    else this.schedule();
  }

  /** Replaces everything with these points (times in ms, ascending). */
  setAll(points: Array<{ ts: number; value: unknown }>): void {
    this.keys.length = 0;
    this.xs.length = 0;
    this.ys.length = 0;
    for (const p of points) this.push(p.ts, p.value);
    this.rebuild();
  }

  clear(): void {
    this.setAll([]);
  }

  private schedule(): void {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.plot?.setData([this.xs, ...this.ys]);
      this.showLatest();
    });
  }

  private rebuild(): void {
    this.plot?.destroy();
    this.plot = undefined;
    if (this.keys.length === 0 || this.xs.length === 0) {
      this.el.replaceChildren(this.empty);
      return;
    }
    this.el.replaceChildren();
    const opts: uPlot.Options = {
      width: this.width(),
      height: this.options.height ?? 260,
      scales: { x: { time: true } },
      series: [
        { label: 'time' },
        ...this.keys.map((k, i) => ({
          label: k,
          stroke: COLORS[i % COLORS.length],
          width: 2,
          spanGaps: true,
        })),
      ],
      axes: [{ grid: { stroke: '#eef0f3' } }, { grid: { stroke: '#eef0f3' }, size: axisWidth }],
      cursor: { drag: { x: true, y: false } },
      legend: { live: true },
    };
    this.plot = new uPlot(opts, [this.xs, ...this.ys], this.el);
    this.showLatest();
  }

  /** The legend shows the newest values unless the cursor is on the chart. */
  private showLatest(): void {
    const plot = this.plot;
    if (plot && this.xs.length > 0 && (plot.cursor.left ?? -1) < 0)
      plot.setLegend({ idx: this.xs.length - 1 });
  }

  destroy(): void {
    cancelAnimationFrame(this.frame);
    this.resize.disconnect();
    this.plot?.destroy();
    this.plot = undefined;
  }
}
