// A real OpenID provider (oidc-provider, pinned in package.json) on loopback, for the
// server's SSO tests (crates/server/tests/sso.rs). Runs on Node 18 (Debian 12) and later.
// Usage: node op.mjs   (env: OP_PORT (0: any free port), OP_ISSUER, OP_CLIENT_ID,
//   OP_CLIENT_SECRET, OP_REDIRECT_URIS (comma-separated), OP_AUTH_METHOD, OP_CODE_TTL)
// Prints one line "READY <issuer>" on stdout when listening; stops on SIGTERM.
//
// Test hooks (loopback only, never in a real provider):
//   POST /__test/tamper  mode=aud|iss|expired|nonce|none|badsig  rewrites the ID token of
//        the next /token answer (re-signed with the real key, except none and badsig)
//   POST /__test/account login=bob&groups=a,b                   changes an account's groups
// Login page: /interaction/<uid>, fields login, password, otp ("123456" gives amr
// pwd,otp,mfa; empty gives pwd). Accounts: alice/alice-pw, bob/bob-pw, carol/carol-pw.
import * as http from 'node:http';
import * as crypto from 'node:crypto';
import Provider from 'oidc-provider';
import { SignJWT, UnsecuredJWT, importJWK } from 'jose';

const PORT = Number(process.env.OP_PORT || 0);
const HOST = '127.0.0.1';
const CLIENT_ID = process.env.OP_CLIENT_ID || 'drawbridge';
const CLIENT_SECRET = process.env.OP_CLIENT_SECRET || 'drawbridge-test-secret-0123456789';
const REDIRECT_URIS = (process.env.OP_REDIRECT_URIS || 'https://127.0.0.1:8443/portal/sso/callback').split(',');

// Accounts are defined in code; tests may change groups via /__test/account.
const ACCOUNTS = {
  alice: { password: 'alice-pw', sub: 'alice-0001', email: 'alice@plant.example', name: 'Alice Operator', groups: ['plant-ops', 'drawbridge-admins'] },
  bob: { password: 'bob-pw', sub: 'bob-0002', email: 'bob@plant.example', name: 'Bob Viewer', groups: ['viewers'] },
  carol: { password: 'carol-pw', sub: 'carol-0003', email: 'carol@plant.example', name: 'Carol Nobody', groups: [] },
};
const bySub = (sub) => Object.values(ACCOUNTS).find((a) => a.sub === sub);

function rsaJwk(kid) {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
}
const SIGNING = rsaJwk('op-key-1');
const ROGUE = rsaJwk('op-key-1'); // same kid, different key: for "bad signature" tests

const configuration = {
  clients: [{
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    client_name: 'Drawbridge',
    redirect_uris: REDIRECT_URIS,
    response_types: ['code'],
    grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
    token_endpoint_auth_method: process.env.OP_AUTH_METHOD || 'client_secret_basic',
  }],
  jwks: { keys: [SIGNING] },
  cookies: { keys: ['test-cookie-key-not-secret'] },
  renderError: async (ctx, out) => { ctx.type = 'html'; ctx.body = page('Error', `<p id="error">${esc(out.error)}: ${esc(out.error_description || '')}</p>`); },
  pkce: { required: () => true },                  // PKCE S256 mandatory for every client
  features: {
    devInteractions: { enabled: false },           // our own pages below set amr
    deviceFlow: {                                  // plain pages: no external fonts/CSS, stable ids
      enabled: true,
      userCodeInputSource: async (ctx, form, out, err) => {
        ctx.body = page('Device sign-in', `${err ? '<p id="error">code not accepted</p>' : ''}${form}<button type="submit" id="device-continue" form="op.deviceInputForm">Continue</button>`);
      },
      userCodeConfirmSource: async (ctx, form, client, deviceInfo, userCode) => {
        ctx.body = page('Confirm device', `<p>Code <code id="user-code">${userCode}</code></p>${form}<button type="submit" id="device-confirm" form="op.deviceConfirmForm">Continue</button>`);
      },
      successSource: async (ctx) => { ctx.body = page('Sign-in Success', '<p id="done">You can close this page.</p>'); },
    },
    revocation: { enabled: true },
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  claims: { acr: null, amr: null, auth_time: null, sid: null, iss: null, openid: ['sub', 'amr', 'auth_time'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  conformIdTokenClaims: false,                     // put email/name/groups into the ID token itself
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: { AccessToken: 600, IdToken: 600, RefreshToken: 3600, DeviceCode: 600, AuthorizationCode: Number(process.env.OP_CODE_TTL || 60), Interaction: 600, Session: 3600, Grant: 3600 },
  // first-party client: no consent page, grant everything requested
  loadExistingGrant: async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid offline_access email profile groups');
    await grant.save();
    return grant;
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  findAccount: async (ctx, sub) => {
    const a = bySub(sub);
    if (!a) return undefined;
    return {
      accountId: sub,
      claims: async () => ({ sub, email: a.email, email_verified: true, name: a.name, groups: [...a.groups] }),
    };
  },
};

const ISSUER_PLACEHOLDER = process.env.OP_ISSUER; // set after listen if not given
let provider;
let tamper = null; // one-shot mutation of the next id_token: set via POST /__test/tamper

const esc = (v) => String(v).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function page(title, body) { return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${title}</title></head><body><h1>${title}</h1>${body}</body></html>`; }

async function readForm(req) {
  let data = '';
  for await (const chunk of req) data += chunk;
  return Object.fromEntries(new URLSearchParams(data));
}

async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') {
    if (details.prompt.name !== 'login') {           // consent is covered by loadExistingGrant
      return provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
    }
    res.setHeader('content-type', 'text/html; charset=utf-8');
    return res.end(page('Sign-in', `
<form id="login" method="post" action="/interaction/${uid}">
  <input type="text" name="login" id="login-name" autofocus required>
  <input type="password" name="password" id="login-password" required>
  <input type="text" name="otp" id="login-otp" placeholder="one-time code (optional)">
  <button type="submit" id="login-submit">Sign-in</button>
</form>
<form method="post" action="/interaction/${uid}/abort"><button type="submit" id="abort">Cancel</button></form>`));
  }
  if (req.url.endsWith('/abort')) {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'End-User aborted interaction' }, { mergeWithLastSubmission: false });
  }
  const form = await readForm(req);
  const a = ACCOUNTS[form.login];
  if (!a || a.password !== form.password) {
    res.statusCode = 401;
    res.setHeader('content-type', 'text/html; charset=utf-8');
    return res.end(page('Sign-in failed', `<p id="error">wrong login or password</p><a href="/interaction/${uid}">again</a>`));
  }
  const amr = form.otp === '123456' ? ['pwd', 'otp', 'mfa'] : ['pwd'];
  return provider.interactionFinished(req, res, { login: { accountId: a.sub, amr, remember: false } }, { mergeWithLastSubmission: false });
}

async function mutateIdToken(idToken) {
  const t = tamper; tamper = null;
  const [h, p] = idToken.split('.').slice(0, 2).map((s) => JSON.parse(Buffer.from(s, 'base64url')));
  const now = Math.floor(Date.now() / 1000);
  switch (t) {
    case 'aud': p.aud = 'someone-else'; break;
    case 'iss': p.iss = 'http://127.0.0.1:1/evil'; break;
    case 'expired': p.iat = now - 7200; p.exp = now - 3600; break;
    case 'nonce': p.nonce = 'not-the-nonce'; break;
    case 'none': return new UnsecuredJWT(p).encode();
    case 'badsig': return new SignJWT(p).setProtectedHeader({ alg: 'RS256', kid: ROGUE.kid }).sign(await importJWK(ROGUE, 'RS256'));
    default: return idToken;
  }
  return new SignJWT(p).setProtectedHeader({ alg: h.alg, kid: h.kid }).sign(await importJWK(SIGNING, 'RS256'));
}

async function main() {
  const server = http.createServer();
  await new Promise((r) => server.listen(PORT, HOST, r));
  const issuer = ISSUER_PLACEHOLDER || `http://${HOST}:${server.address().port}`;
  provider = new Provider(issuer, configuration);
  provider.use(async (ctx, next) => {              // koa middleware around all OP routes
    await next();
    if (tamper && ctx.path === '/token' && ctx.body && ctx.body.id_token) {
      ctx.body = { ...ctx.body, id_token: await mutateIdToken(ctx.body.id_token) };
    }
  });
  for (const ev of ['grant.error', 'server_error', 'authorization.error']) provider.on(ev, (ctx, err) => console.error(ev, err.message, err.error_detail || ''));
  const callback = provider.callback();
  server.on('request', async (req, res) => {
    try {
      const u = new URL(req.url, issuer);
      const m = u.pathname.match(/^\/interaction\/([\w-]+)(\/abort)?$/);
      if (m) return await interaction(req, res, m[1]);
      if (u.pathname === '/__test/tamper' && req.method === 'POST') {
        tamper = (await readForm(req)).mode || null; res.statusCode = 204; return res.end();
      }
      if (u.pathname === '/__test/account' && req.method === 'POST') { // login=alice&groups=a,b
        const f = await readForm(req); ACCOUNTS[f.login].groups = f.groups ? f.groups.split(',') : [];
        res.statusCode = 204; return res.end();
      }
      return callback(req, res);
    } catch (e) {
      res.statusCode = 500; res.end(String(e && e.stack || e));
    }
  });
  process.stdout.write(`READY ${issuer}\n`);
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop); process.on('SIGINT', stop);
}
main().catch((e) => { console.error(e); process.exit(1); });
