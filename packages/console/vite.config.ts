import { defineConfig } from 'vite';

/** The API the dev server (`npm run dev`) forwards to. */
const api = process.env.IOTMP_API ?? 'http://localhost:3000';
const API_PREFIXES = ['/v1', '/v2', '/v3', '/oauth', '/health', '/metrics', '/openapi.json'];

// The console is plain TypeScript + DOM; the server serves dist/ at "/" (hashed assets
// under /assets/ get a long cache, index.html none).
export default defineConfig({
  root: import.meta.dirname,
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 300,
    modulePreload: { polyfill: false },
  },
  server: {
    proxy: Object.fromEntries(API_PREFIXES.map((p) => [p, { target: api, ws: true }])),
  },
});
