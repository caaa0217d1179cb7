// Drive the example web app (examples/webapp) in headless Chromium through
// a whole session. The script logs in with the form and changes the counter
// and the note. It waits for the access token to expire and changes the
// counter again, which the page completes after a refresh and without a new
// login. Last it reloads and logs out. Cookies are checked after each step.
//
// Usage: node tests/browser/webapp.mjs APP_URL CHROMIUM_PATH USER_DATA_DIR USER_ID
//
// APP_URL is the app's origin, such as http://127.0.0.1:8000, and
// USER_DATA_DIR a new empty folder for Chromium's profile. Prints one JSON
// line: {"ok", "checks" (name to true or false), "failures", "responses"}.
// Exits 1 when a check fails or a step throws, and 2 on a usage error.
// The output never contains token values.

import { chromium } from "playwright-core";

const ACCESS = "sessiond_access_token";
const REFRESH = "sessiond_refresh_token";
const ANTI_CSRF = "XSRF-TOKEN";
const ANTI_CSRF_HEADER = "x-xsrf-token";
const REFRESH_PATH = "/auth/refresh";
const STEP_TIMEOUT_MS = 10_000;
// The daemon runs with access_token_validity_s=2, so the access cookie's
// Max-Age is at most 2 s.
const ACCESS_EXPIRY_TIMEOUT_MS = 6_000;

// Flags for Debian's Chromium run as root on a machine whose network ends at
// loopback. Without the background-networking flags Chromium tries to reach
// Google's hosts. Playwright adds --user-data-dir from launchPersistentContext.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

const [appUrl, executablePath, userDataDir, userId] = process.argv.slice(2);
if (!appUrl || !executablePath || !userDataDir || !userId) {
  console.error(
    "usage: node webapp.mjs APP_URL CHROMIUM_PATH USER_DATA_DIR USER_ID",
  );
  process.exit(2);
}

const checks = {};
const failures = [];
const responses = [];

function check(name, passed, detail = "") {
  checks[name] = Boolean(passed);
  if (!passed) {
    failures.push(detail ? `${name}: ${detail}` : name);
  }
}

function path(url) {
  return new URL(url).pathname;
}

async function cookiesByName(context) {
  const byName = {};
  for (const cookie of await context.cookies()) {
    byName[cookie.name] = cookie;
  }
  return byName;
}

// The attributes of a cookie, without its value.
function attributes(cookie) {
  if (cookie === undefined) {
    return null;
  }
  const { value, ...rest } = cookie;
  return rest;
}

function checkTokenCookies(step, cookies) {
  const access = cookies[ACCESS];
  const refresh = cookies[REFRESH];
  const antiCsrf = cookies[ANTI_CSRF];
  check(`${step}: access cookie set`, access !== undefined);
  check(`${step}: refresh cookie set`, refresh !== undefined);
  check(`${step}: anti-CSRF cookie set`, antiCsrf !== undefined);
  if (access === undefined || refresh === undefined || antiCsrf === undefined) {
    return;
  }
  const detail = JSON.stringify([access, refresh, antiCsrf].map(attributes));
  check(`${step}: access cookie HttpOnly`, access.httpOnly === true, detail);
  check(`${step}: access cookie SameSite=Lax`, access.sameSite === "Lax", detail);
  check(`${step}: access cookie Path=/`, access.path === "/", detail);
  check(`${step}: access cookie Secure`, access.secure === true, detail);
  check(`${step}: refresh cookie HttpOnly`, refresh.httpOnly === true, detail);
  check(`${step}: refresh cookie SameSite=Lax`, refresh.sameSite === "Lax", detail);
  check(`${step}: refresh cookie Path`, refresh.path === REFRESH_PATH, detail);
  check(`${step}: refresh cookie Secure`, refresh.secure === true, detail);
  check(`${step}: anti-CSRF cookie readable by scripts`, antiCsrf.httpOnly === false, detail);
  check(`${step}: anti-CSRF cookie SameSite=Lax`, antiCsrf.sameSite === "Lax", detail);
  check(`${step}: anti-CSRF cookie Path=/`, antiCsrf.path === "/", detail);
}

async function checkScriptCookies(step, page) {
  // What the page's own scripts see: only the anti-CSRF cookie.
  const names = (await page.evaluate(() => document.cookie))
    .split("; ")
    .filter(Boolean)
    .map((part) => part.split("=")[0]);
  check(`${step}: scripts see only the anti-CSRF cookie`,
    names.length === 1 && names[0] === ANTI_CSRF, JSON.stringify(names));
}

async function waitForText(page, selector, text) {
  await page.locator(selector).filter({ hasText: text }).waitFor({ timeout: STEP_TIMEOUT_MS });
}

function countResponses(method, pathname, status) {
  return responses.filter(
    (r) => r.method === method && r.path === pathname && r.status === status,
  ).length;
}

async function run(context) {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const loginPageLoads = [];
  page.on("framenavigated", (frame) => {
    if (frame === page.mainFrame() && path(frame.url()) === "/login") {
      loginPageLoads.push(Date.now());
    }
  });
  const csrfHeaders = [];
  page.on("request", (request) => {
    if (request.method() === "POST" && path(request.url()).startsWith("/api/")) {
      csrfHeaders.push(Boolean(request.headers()[ANTI_CSRF_HEADER]));
    }
  });
  const accessReplacements = [];
  page.on("response", async (response) => {
    const request = response.request();
    responses.push({ method: request.method(), path: path(response.url()), status: response.status() });
    if (request.method() === "POST" && path(response.url()) === "/api/counter") {
      const setCookie = (await response.headerValue("set-cookie")) ?? "";
      accessReplacements.push(setCookie.includes(`${ACCESS}=`));
    }
  });

  // 1. An anonymous visit ends on the login page.
  await page.goto(`${appUrl}/`);
  await page.waitForURL(`${appUrl}/login`);
  check("anonymous visit lands on login", path(page.url()) === "/login");

  // 2. Log in through the form.
  await page.fill("#user-id", userId);
  await page.click("#login");
  await page.waitForURL(`${appUrl}/`);
  await waitForText(page, "#current-user", userId);
  const loggedIn = await cookiesByName(context);
  checkTokenCookies("after login", loggedIn);
  await checkScriptCookies("after login", page);
  const loginPageLoadsAfterLogin = loginPageLoads.length;

  // 3. Change the session data. A slow machine may already need a refresh
  // here, so this step does not count refreshes.
  await waitForText(page, "#counter", "0");
  await page.click("#increment");
  await waitForText(page, "#counter", "1");
  await page.fill("#note", "written in Chromium");
  await page.click("#save-note");
  await waitForText(page, "#saved-note", "written in Chromium");

  // 4. Wait until the browser drops the access cookie at its Max-Age.
  const expiryStarted = Date.now();
  let beforeAction = await cookiesByName(context);
  while (beforeAction[ACCESS] !== undefined && Date.now() - expiryStarted < ACCESS_EXPIRY_TIMEOUT_MS) {
    await page.waitForTimeout(100);
    beforeAction = await cookiesByName(context);
  }
  check("access cookie expired", beforeAction[ACCESS] === undefined,
    `still there after ${ACCESS_EXPIRY_TIMEOUT_MS} ms`);
  check("refresh cookie outlives the access cookie", beforeAction[REFRESH] !== undefined);

  // 5. The next action refreshes the tokens and succeeds, with no new login.
  const rejectedBefore = countResponses("POST", "/api/counter", 401);
  const refreshesBefore = countResponses("POST", REFRESH_PATH, 204);
  const countedBefore = countResponses("POST", "/api/counter", 200);
  await page.click("#increment");
  await waitForText(page, "#counter", "2");
  check("expired POST got try_refresh_token",
    countResponses("POST", "/api/counter", 401) === rejectedBefore + 1);
  check("one refresh", countResponses("POST", REFRESH_PATH, 204) === refreshesBefore + 1);
  check("retried POST succeeded", countResponses("POST", "/api/counter", 200) === countedBefore + 1);
  check("anti-CSRF header on every POST", csrfHeaders.length >= 3 && csrfHeaders.every(Boolean),
    JSON.stringify(csrfHeaders));
  check("no login page after refresh", loginPageLoads.length === loginPageLoadsAfterLogin);
  const refreshed = await cookiesByName(context);
  checkTokenCookies("after refresh", refreshed);
  check("refresh token rotated", refreshed[REFRESH]?.value !== loggedIn[REFRESH]?.value);
  check("anti-CSRF token rotated", refreshed[ANTI_CSRF]?.value !== loggedIn[ANTI_CSRF]?.value);
  check("access token replaced", refreshed[ACCESS]?.value !== loggedIn[ACCESS]?.value);
  // The retried POST was the first use of the new access token: the daemon
  // promoted the new refresh token and sent a replacement access token.
  check("retried POST set a replacement access cookie", accessReplacements.at(-1) === true,
    JSON.stringify(accessReplacements));

  // 6. A reload shows the stored data, still with no new login.
  await page.reload();
  await waitForText(page, "#counter", "2");
  await waitForText(page, "#saved-note", "written in Chromium");
  check("reload keeps the session", loginPageLoads.length === loginPageLoadsAfterLogin);

  // 7. Log out.
  await page.click("#logout");
  await page.waitForURL(`${appUrl}/login`);
  const loggedOut = await cookiesByName(context);
  check("logout deletes the access cookie", loggedOut[ACCESS] === undefined);
  check("logout deletes the refresh cookie", loggedOut[REFRESH] === undefined);
  check("logout deletes the anti-CSRF cookie", loggedOut[ANTI_CSRF] === undefined);
  check("logout returned 204", countResponses("POST", "/auth/logout", 204) === 1);
}

let context;
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
  });
  await run(context);
} catch (error) {
  failures.push(`step failed: ${error.stack ?? error}`);
} finally {
  await context?.close();
}

const ok = failures.length === 0;
console.log(JSON.stringify({ ok, checks, failures, responses }));
process.exit(ok ? 0 : 1);
