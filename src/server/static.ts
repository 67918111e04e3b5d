/**
 * Static files of the web playground (built into dist/web by `npm run build`: web/*.ts compiled
 * by web/tsconfig.json, web/*.html and *.css copied by scripts/build-web.js).
 *
 * Only plain files inside the root are served: the URL path is decoded once, and anything that
 * would leave the root (`..` segments, encoded or not, backslashes, NUL, absolute paths) is
 * refused before the file system is touched. Responses are never cached (the playground is
 * rebuilt in place) and carry a strict Content-Security-Policy: the page loads only its own
 * scripts and styles and talks only to this server.
 */
import { createReadStream, existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { extname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

/** dist/web, next to dist/src (this file compiles to dist/src/server/static.js). */
export const DEFAULT_WEB_ROOT = fileURLToPath(new URL('../../web/', import.meta.url));

export const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};

const SECURITY_HEADERS: Record<string, string> = {
  'Cache-Control': 'no-store',
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Content-Security-Policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
};

export type StaticResult = 'served' | 'not-found' | 'bad-path';

/**
 * Maps a URL pathname (still percent-encoded) to a file under root, or null when it would
 * leave the root or is malformed. `/` is index.html.
 */
export function resolveStaticPath(root: string, pathname: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(pathname);
  } catch {
    return null;
  }
  if (!decoded.startsWith('/') || decoded.includes('\0') || decoded.includes('\\')) return null;
  const parts = decoded.split('/').filter((p) => p !== '');
  if (parts.some((p) => p === '..' || p === '.' || p.startsWith('.'))) return null; // no traversal, no dotfiles
  if (!parts.length) parts.push('index.html');
  const base = resolve(root);
  const file = resolve(base, ...parts);
  if (!file.startsWith(base + sep)) return null;
  return file;
}

/** Whether the playground has been built into root. */
export function playgroundBuilt(root = DEFAULT_WEB_ROOT): boolean {
  return existsSync(join(root, 'index.html')) && existsSync(join(root, 'app.js'));
}

/** Serves a GET/HEAD for `pathname` from root. Writes nothing unless it returns 'served'. */
export async function serveStatic(req: IncomingMessage, res: ServerResponse, pathname: string, root = DEFAULT_WEB_ROOT): Promise<StaticResult> {
  const file = resolveStaticPath(root, pathname);
  if (!file) return 'bad-path';
  const type = CONTENT_TYPES[extname(file).toLowerCase()];
  if (!type) return 'not-found';
  let size: number;
  try {
    const st = await stat(file);
    if (!st.isFile()) return 'not-found';
    size = st.size;
  } catch {
    return 'not-found';
  }
  res.writeHead(200, { 'Content-Type': type, 'Content-Length': size, ...SECURITY_HEADERS });
  return sendFile(req, res, file);
}

/**
 * Files of the served model folder that the playground's in-tab mode reads (GET
 * /api/model/files/NAME): only these names, only from the folder itself.
 */
export const MODEL_FILE_TYPES: Record<string, string> = {
  'config.json': 'application/json; charset=utf-8',
  'generation_config.json': 'application/json; charset=utf-8',
  'tokenizer.json': 'application/json; charset=utf-8',
  'tokenizer_config.json': 'application/json; charset=utf-8',
  'model.safetensors': 'application/octet-stream',
};

/**
 * Serves GET/HEAD of one model file, read-only. 'not-found' for a name not in
 * MODEL_FILE_TYPES, a model that is not a folder (a .gguf), or a file the folder lacks.
 * Writes nothing unless it returns 'served'.
 */
export async function serveModelFile(req: IncomingMessage, res: ServerResponse, modelDir: string, name: string): Promise<'served' | 'not-found'> {
  if (!Object.prototype.hasOwnProperty.call(MODEL_FILE_TYPES, name)) return 'not-found';
  let size: number;
  const file = join(resolve(modelDir), name);
  try {
    if (!(await stat(modelDir)).isDirectory()) return 'not-found';
    const st = await stat(file);
    if (!st.isFile()) return 'not-found';
    size = st.size;
  } catch {
    return 'not-found';
  }
  res.writeHead(200, { 'Content-Type': MODEL_FILE_TYPES[name]!, 'Content-Length': size, ...SECURITY_HEADERS });
  return sendFile(req, res, file);
}

/** Streams a file after its headers were written (HEAD: headers only); a client leaving ends the stream. */
async function sendFile(req: IncomingMessage, res: ServerResponse, file: string): Promise<'served'> {
  if (req.method === 'HEAD') {
    res.end();
    return 'served';
  }
  await new Promise<void>((done) => {
    const stream = createReadStream(file);
    stream.on('error', () => {
      res.destroy();
      done();
    });
    stream.on('end', () => done());
    res.on('close', () => {
      stream.destroy();
      done();
    });
    stream.pipe(res);
  });
  return 'served';
}
