// The demo's service worker (copied to the site's root by trunk build, so it controls
// index.html): the page and the package load offline after the first visit. The app's files
// are fetched network-first (a new build is picked up as soon as the server is reachable) and
// kept in a cache; the models are not touched here: the package verifies and caches them
// itself (Cache API, by sha256).
const CACHE = 'tastebud-app-v2';
const SHELL = ['./index.html', './web/pkg/tastebud.js', './web/pkg/worker.js', './web/pkg/comlink.mjs',
  './web/pkg/tastebud-web.js', './web/pkg/tastebud-web_bg.wasm'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

// An older build's app cache (other file names) goes; the models' cache is the package's.
self.addEventListener('activate', (event) => {
  event.waitUntil(caches.keys()
    .then((names) => Promise.all(names.filter((name) => name.startsWith('tastebud-app-') && name !== CACHE)
      .map((name) => caches.delete(name))))
    .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== location.origin || url.pathname.includes('/models/')) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    let response;
    try {
      response = await fetch(event.request);
    } catch (offline) {
      const cached = await cache.match(event.request, { ignoreSearch: true });
      if (cached) return cached;
      throw offline;
    }
    // A full cache (quota) only costs the offline copy.
    if (response.ok) await cache.put(event.request, response.clone()).catch(() => {});
    return response;
  })());
});
