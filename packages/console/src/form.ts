/**
 * A form built from a resource's example input (DESCRIBE `in`): numbers, booleans
 * (checkbox) and strings get inputs, nested objects nested fieldsets, anything else
 * (arrays, null, very deep or wide objects) a JSON textarea. `read()` gives the value back
 * in the sample's shape, or throws a FormError naming the field.
 */
import { h } from './dom.js';

export class FormError extends Error {
  override name = 'FormError';
}

export interface ValueForm {
  el: HTMLElement;
  read(): unknown;
}

const MAX_DEPTH = 5;
const MAX_KEYS = 40;

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A JSON textarea; empty text reads as undefined (no input). */
export function jsonField(sample: unknown, name: string, label: string, required = false): ValueForm {
  const area = h('textarea', {
    class: 'json',
    name,
    rows: 4,
    spellcheck: 'false',
    placeholder: required ? 'JSON value' : 'JSON value (empty: none)',
    value: sample === undefined ? '' : JSON.stringify(sample, null, 2),
  });
  return {
    el: h('label', { class: 'field' }, h('span', { class: 'field-label' }, label), area),
    read: () => {
      const text = area.value.trim();
      if (text === '') {
        if (required) throw new FormError(`${label}: a JSON value is needed`);
        return undefined;
      }
      try {
        return JSON.parse(text);
      } catch (err) {
        throw new FormError(`${label}: not valid JSON (${(err as Error).message})`);
      }
    },
  };
}

function build(sample: unknown, path: string, label: string, depth: number): ValueForm {
  if (typeof sample === 'number') {
    const input = h('input', { type: 'number', step: 'any', name: path, value: String(sample) });
    return {
      el: h('label', { class: 'field inline' }, h('span', { class: 'field-label' }, label), input),
      read: () => {
        const n = input.valueAsNumber;
        if (input.value.trim() === '' || !Number.isFinite(n)) throw new FormError(`${label}: enter a number`);
        return n;
      },
    };
  }
  if (typeof sample === 'boolean') {
    const input = h('input', { type: 'checkbox', name: path, checked: sample });
    return {
      el: h('label', { class: 'field check' }, input, h('span', { class: 'field-label' }, label)),
      read: () => input.checked,
    };
  }
  if (typeof sample === 'string') {
    const input = h('input', { type: 'text', name: path, value: sample, spellcheck: 'false' });
    return {
      el: h('label', { class: 'field inline' }, h('span', { class: 'field-label' }, label), input),
      read: () => input.value,
    };
  }
  if (isPlainObject(sample) && depth < MAX_DEPTH) {
    const keys = Object.keys(sample);
    if (keys.length > 0 && keys.length <= MAX_KEYS) {
      const children = keys.map(
        (k) => [k, build(sample[k], path ? `${path}.${k}` : k, k, depth + 1)] as const,
      );
      const el =
        depth === 0
          ? h('div', { class: 'fields' }, ...children.map(([, c]) => c.el))
          : h(
              'fieldset',
              { class: 'fields nested' },
              h('legend', null, label),
              ...children.map(([, c]) => c.el),
            );
      return {
        el,
        read: () => Object.fromEntries(children.map(([k, c]) => [k, c.read()])),
      };
    }
  }
  return jsonField(sample, path || 'value', label, true);
}

/** Values that have fields: primitives, and objects with keys. */
function formable(v: unknown): boolean {
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'string') return true;
  return isPlainObject(v) && Object.keys(v).length > 0;
}

/**
 * The input form of a resource. Without a sample: a JSON textarea (empty = no input).
 * A toggle switches between the fields and the JSON text of the same value.
 */
export function inputForm(sample: unknown, testid: string): ValueForm {
  const holder = h('div', { class: 'input-form', testid });
  const toggle = h('button', { type: 'button', class: 'link-btn', title: 'Switch between fields and JSON' });
  let asJson = !formable(sample);
  let current: ValueForm = jsonField(undefined, 'input', 'Input (JSON)');
  const render = (value: unknown) => {
    current = asJson ? jsonField(value, 'input', 'Input (JSON)') : build(value, '', 'value', 0);
    toggle.textContent = asJson ? 'Edit as fields' : 'Edit as JSON';
    toggle.hidden = asJson && !formable(value);
    holder.replaceChildren(current.el, toggle);
  };
  toggle.addEventListener('click', () => {
    let value: unknown;
    try {
      value = current.read();
    } catch (err) {
      toggle.title = (err as Error).message;
      return;
    }
    asJson = !asJson || !formable(value);
    render(value);
  });
  render(sample);
  return { el: holder, read: () => current.read() };
}
