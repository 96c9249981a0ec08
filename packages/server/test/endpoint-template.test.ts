/**
 * Endpoint templates (endpoints/template.ts), pure functions: placeholder syntax, paths into
 * the data (own keys and array indexes only), text / URL / JSON rendering and their escaping,
 * missing values, PSON-ish data (bigint, bytes, Maps), and hostile input: prototype keys,
 * JSON and URL injection through data, deep and cyclic data, output amplification.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  checkJsonTemplate,
  lookup,
  MAX_DATA_DEPTH,
  MAX_TEMPLATE_DEPTH,
  parseTemplate,
  renderJson,
  renderText,
  renderUrl,
  TemplateError,
  toTemplateData,
} from '../src/endpoints/template.js';

const LIMIT = { maxLength: 1024 * 1024 };

function isTemplateError(code: string) {
  return (err: unknown) => {
    assert.ok(err instanceof TemplateError, `a TemplateError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.ok(err.message.length > 0);
    return true;
  };
}

/** Nested arrays, `depth` levels. */
function nested(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

describe('placeholder syntax', () => {
  it('splits literal text and placeholders; spaces inside the braces are ignored', () => {
    assert.deepEqual(parseTemplate('a {{x}} b {{ y.z }}{{list.0}}'), [
      'a ',
      { path: ['x'], source: '{{x}}' },
      ' b ',
      { path: ['y', 'z'], source: '{{ y.z }}' },
      { path: ['list', '0'], source: '{{list.0}}' },
    ]);
    assert.deepEqual(parseTemplate('no placeholders'), ['no placeholders']);
    assert.deepEqual(parseTemplate(''), []);
  });

  it('{{}}, {{payload}} are the whole data; {{payload.a}} is {{a}}', () => {
    assert.deepEqual(parseTemplate('{{}}'), [{ path: [], source: '{{}}' }]);
    assert.deepEqual(parseTemplate('{{payload}}'), [{ path: [], source: '{{payload}}' }]);
    assert.deepEqual(parseTemplate('{{ payload.a.b }}'), [{ path: ['a', 'b'], source: '{{ payload.a.b }}' }]);
  });

  it('unbalanced braces are literal text', () => {
    assert.deepEqual(parseTemplate('{{a'), ['{{a']);
    assert.deepEqual(parseTemplate('a}}'), ['a}}']);
    assert.deepEqual(parseTemplate('{{{a}}}'), ['{', { path: ['a'], source: '{{a}}' }, '}']);
  });

  it('refuses malformed placeholders, functions and defaults (invalid_template)', () => {
    for (const bad of [
      '{{a..b}}',
      '{{.a}}',
      '{{a.}}',
      '{{a b}}',
      '{{payload:toBoolean}}',
      '{{payload:fn=1}}',
      '{{a=1}}',
      '{{a|b}}',
      `{{${Array.from({ length: 33 }, () => 'a').join('.')}}}`,
      `{{${'k'.repeat(257)}}}`,
    ]) {
      assert.throws(() => parseTemplate(`x ${bad} y`), isTemplateError('invalid_template'), bad);
    }
    // 32 segments of 256 characters are fine.
    assert.equal(
      parseTemplate(`{{${Array.from({ length: 32 }, () => 'k'.repeat(256)).join('.')}}}`).length,
      1,
    );
  });

  it('checkJsonTemplate checks every string and the depth of a body template', () => {
    checkJsonTemplate({ a: ['{{x}}', { b: 'v {{y.z}}' }], n: 1, t: true, z: null });
    assert.throws(() => checkJsonTemplate({ a: [{ b: '{{x:fn}}' }] }), isTemplateError('invalid_template'));
    checkJsonTemplate(nested(MAX_TEMPLATE_DEPTH));
    assert.throws(
      () => checkJsonTemplate(nested(MAX_TEMPLATE_DEPTH + 1)),
      isTemplateError('invalid_template'),
    );
  });
});

describe('paths into the data', () => {
  const data = { a: { b: [10, { c: 'deep' }] }, s: 'text', zero: 0, no: false, nothing: null };

  it('object keys and array indexes', () => {
    assert.equal(lookup(data, ['a', 'b', '0']), 10);
    assert.equal(lookup(data, ['a', 'b', '1', 'c']), 'deep');
    assert.deepEqual(lookup(data, []), data);
    assert.equal(lookup(data, ['zero']), 0);
    assert.equal(lookup(data, ['no']), false);
    assert.equal(lookup(data, ['nothing']), null);
  });

  it('missing: absent keys, indexes out of range or not canonical, paths through scalars', () => {
    for (const path of [
      ['x'],
      ['a', 'x'],
      ['a', 'b', '2'],
      ['a', 'b', '-1'],
      ['a', 'b', '01'],
      ['a', 'b', '1e0'],
      ['a', 'b', 'length'],
      ['s', 'length'],
      ['s', '0'],
      ['zero', 'x'],
      ['nothing', 'x'],
    ]) {
      assert.equal(lookup(data, path), undefined, path.join('.'));
    }
  });

  it('never reaches prototypes: constructor, __proto__, toString, hasOwnProperty find nothing', () => {
    for (const key of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf']) {
      assert.equal(lookup({}, [key]), undefined, key);
      assert.equal(lookup([], [key]), undefined, key);
      assert.equal(lookup({ a: {} }, ['a', key, 'name']), undefined, key);
    }
    assert.equal(lookup({}, ['constructor', 'prototype']), undefined);
    // An own "__proto__" key of the data (as JSON.parse makes it) is just a key.
    const own = JSON.parse('{"__proto__": {"x": 1}}') as unknown;
    assert.equal(lookup(own, ['__proto__', 'x']), 1);
  });

  it('Maps (PSON maps not yet converted) are looked up by key', () => {
    assert.equal(lookup(new Map([['k', { v: 2 }]]), ['k', 'v']), 2);
    assert.equal(lookup(new Map([['k', 1]]), ['size']), undefined);
  });
});

describe('text and URL rendering', () => {
  const data = { name: 'Ana', n: 21.5, ok: true, obj: { a: [1, 'x'] }, nil: null, empty: '' };

  it('strings as they are, other values as JSON text, missing as empty text', () => {
    assert.equal(
      renderText('{{name}}|{{n}}|{{ok}}|{{obj}}|{{nil}}|{{empty}}|{{missing}}|{{obj.a.1}}', data, LIMIT),
      'Ana|21.5|true|{"a":[1,"x"]}|null|||x',
    );
    assert.equal(renderText('{{}}', 'just text', LIMIT), 'just text');
    assert.equal(renderText('T={{}}', 22.5, LIMIT), 'T=22.5');
    assert.equal(renderText('{{payload}}', data, LIMIT), JSON.stringify(data));
  });

  it('URL: every inserted text is percent-encoded; data cannot change host, path or query', () => {
    const hostile = { x: '@evil.example/steal?a=1#frag', q: 'a b&c=d/e?f#g', u: 'é' };
    const url = new URL(renderUrl('https://api.example.com/v1/{{x}}?q={{q}}&u={{u}}', hostile, LIMIT));
    assert.equal(url.host, 'api.example.com');
    assert.equal(url.pathname, '/v1/%40evil.example%2Fsteal%3Fa%3D1%23frag');
    assert.deepEqual([...url.searchParams.keys()], ['q', 'u']);
    assert.equal(url.searchParams.get('q'), hostile.q);
    assert.equal(url.searchParams.get('u'), 'é');
    assert.equal(url.hash, '');
    // In the host part it can only make the URL invalid, not point elsewhere.
    assert.throws(() => new URL(renderUrl('http://{{h}}/x', { h: 'evil.example/y' }, LIMIT)));
    // Objects go in as encoded JSON; missing as nothing.
    assert.equal(
      renderUrl('http://h.example/?d={{obj}}&m={{missing}}', data, LIMIT),
      'http://h.example/?d=%7B%22a%22%3A%5B1%2C%22x%22%5D%7D&m=',
    );
  });

  it('URL: text that is not valid Unicode (a lone surrogate) is invalid_data', () => {
    assert.throws(
      () => renderUrl('http://h.example/{{s}}', { s: 'a\ud800b' }, LIMIT),
      isTemplateError('invalid_data'),
    );
  });

  it('property: any string survives a round trip through a URL query and a text template', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 40 }), (v) => {
        const url = new URL(renderUrl('https://h.example/p?v={{v}}&w=1', { v }, LIMIT));
        assert.equal(url.searchParams.get('v'), v);
        assert.equal(url.searchParams.get('w'), '1');
        assert.equal(renderText('<{{v}}>', { v }, LIMIT), `<${v}>`);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('JSON body rendering', () => {
  const data = { n: 21.5, s: 'str', obj: { a: [1, 2] }, arr: [true, null], ok: false, nil: null };

  it('a string that is exactly one placeholder becomes the value, keeping its type', () => {
    const out = JSON.parse(
      renderJson(
        {
          n: '{{n}}',
          s: '{{s}}',
          obj: '{{obj}}',
          arr: '{{arr}}',
          ok: '{{ok}}',
          nil: '{{nil}}',
          all: '{{payload}}',
          whole: '{{}}',
          inner: '{{obj.a.1}}',
        },
        data,
        LIMIT,
      ),
    );
    assert.deepEqual(out, {
      n: 21.5,
      s: 'str',
      obj: { a: [1, 2] },
      arr: [true, null],
      ok: false,
      nil: null,
      all: data,
      whole: data,
      inner: 2,
    });
  });

  it('a missing value is null as a whole value and empty text inside a longer string', () => {
    assert.deepEqual(
      JSON.parse(renderJson({ a: '{{nope}}', b: 'x{{nope}}y', c: ['{{nope.deeper}}'] }, data, LIMIT)),
      {
        a: null,
        b: 'xy',
        c: [null],
      },
    );
  });

  it('inside a longer string the text is inserted and escaped: no JSON injection', () => {
    const hostile = { msg: '", "admin": true, "x": "\n\u0000\\' };
    const out = JSON.parse(renderJson({ text: 'say {{msg}}!', admin: false }, hostile, LIMIT)) as Record<
      string,
      unknown
    >;
    assert.equal(out.text, `say ${hostile.msg}!`);
    assert.equal(out.admin, false);
    assert.deepEqual(Object.keys(out), ['text', 'admin']);
    // Surrounding spaces make it a longer string: the value's text, not the value.
    assert.deepEqual(JSON.parse(renderJson({ n: ' {{n}}' }, data, LIMIT)), { n: ' 21.5' });
  });

  it('object keys are literal; non-string template values are kept', () => {
    assert.deepEqual(
      JSON.parse(renderJson({ '{{s}}': 1, list: [1, 'a', false, null, { x: 2.5 }] }, data, LIMIT)),
      {
        '{{s}}': 1,
        list: [1, 'a', false, null, { x: 2.5 }],
      },
    );
    assert.equal(renderJson('{{n}}', data, LIMIT), '21.5');
    assert.equal(renderJson('T={{n}}', data, LIMIT), '"T=21.5"');
    assert.equal(renderJson(42, data, LIMIT), '42');
  });

  it('an own "__proto__" key in template or data stays data and pollutes nothing', () => {
    const template = JSON.parse('{"__proto__": {"polluted": "{{v}}"}, "k": "{{__proto__}}"}') as unknown;
    const hostileData = JSON.parse('{"v": 1, "__proto__": {"polluted": true}}') as unknown;
    const out = JSON.parse(renderJson(template, hostileData, LIMIT)) as Record<string, unknown>;
    assert.ok(Object.hasOwn(out, '__proto__'));
    assert.deepEqual(Object.keys(out), ['__proto__', 'k']);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.equal(Object.getPrototypeOf(out), Object.prototype);
    const converted = toTemplateData(hostileData) as Record<string, unknown>;
    assert.equal(Object.getPrototypeOf(converted), Object.prototype);
    assert.ok(Object.hasOwn(converted, '__proto__'));
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  it('property: any JSON value as a whole placeholder comes back equal', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), (v) => {
        const expected = JSON.parse(JSON.stringify(v)) as unknown; // -0 becomes 0, as in JSON
        assert.deepEqual(JSON.parse(renderJson({ v: '{{v}}', w: ['{{payload.v}}'] }, { v }, LIMIT)), {
          v: expected,
          w: [expected],
        });
      }),
      { numRuns: 2000 },
    );
  });
});

describe('hostile data', () => {
  it('toTemplateData: bigints, bytes, Maps, non-finite numbers become JSON values', () => {
    const out = toTemplateData(
      new Map<unknown, unknown>([
        ['small', 42n],
        ['big', 2n ** 70n],
        ['bytes', new Uint8Array([1, 2, 255])],
        ['nan', Number.NaN],
        ['inf', Number.POSITIVE_INFINITY],
        ['list', [1, undefined, 'x']],
        [7, 'numeric key'],
      ]),
    );
    assert.deepEqual(out, {
      small: 42,
      big: (2n ** 70n).toString(),
      bytes: 'AQL/',
      nan: null,
      inf: null,
      list: [1, null, 'x'],
      '7': 'numeric key',
    });
    assert.equal(toTemplateData(undefined), null);
  });

  it(`data nested deeper than ${MAX_DATA_DEPTH} levels is invalid_data (not a stack overflow)`, () => {
    assert.doesNotThrow(() => toTemplateData(nested(MAX_DATA_DEPTH)));
    assert.throws(() => toTemplateData(nested(MAX_DATA_DEPTH + 1)), isTemplateError('invalid_data'));
    assert.throws(() => toTemplateData(nested(200_000)), isTemplateError('invalid_data'));
  });

  it('data JSON cannot write (cyclic, far too deep, bigint) is invalid_data, not a crash', () => {
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = cyclic;
    assert.throws(() => renderJson('{{payload}}', cyclic, LIMIT), isTemplateError('invalid_data'));
    assert.throws(() => renderText('{{self}}', cyclic, LIMIT), isTemplateError('invalid_data'));
    assert.throws(() => renderJson('{{payload}}', nested(200_000), LIMIT), isTemplateError('invalid_data'));
    assert.throws(() => renderText('{{n}}', { n: { big: 1n } }, LIMIT), isTemplateError('invalid_data'));
  });

  it('output is bounded: a template repeating a large value fails with too_large', () => {
    const big = { blob: 'x'.repeat(100_000) };
    const manyRefs = Array.from({ length: 1000 }, () => '{{payload}}');
    assert.throws(() => renderJson(manyRefs, big, LIMIT), isTemplateError('too_large'));
    assert.throws(() => renderText(manyRefs.join(','), big, LIMIT), isTemplateError('too_large'));
    assert.throws(
      () => renderUrl(`http://h.example/?${manyRefs.join('&')}`, big, { maxLength: 8192, what: 'URL' }),
      (err: unknown) => err instanceof TemplateError && err.code === 'too_large' && /URL/.test(err.message),
    );
    assert.throws(
      () => renderJson({ s: `a${'{{blob}}'.repeat(20)}` }, big, LIMIT),
      isTemplateError('too_large'),
    );
    // Just under the limit is fine.
    const exact = renderText('{{blob}}', { blob: 'y'.repeat(LIMIT.maxLength) }, LIMIT);
    assert.equal(exact.length, LIMIT.maxLength);
  });

  it('a JSON template nested too deep to render is invalid_template', () => {
    assert.throws(
      () => renderJson(nested(MAX_TEMPLATE_DEPTH + 5), {}, LIMIT),
      isTemplateError('invalid_template'),
    );
  });
});
