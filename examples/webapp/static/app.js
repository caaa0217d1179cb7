// The front end of the sessiond demo. Every API call goes through
// request(), which sends the anti-CSRF header, refreshes the tokens once on
// 401 {"error": "try_refresh_token"} and retries, and goes to the login page
// on any other 401.

const config = document.body.dataset;

function readCookie(name) {
  for (const part of document.cookie.split("; ")) {
    const separator = part.indexOf("=");
    if (part.slice(0, separator) === name) {
      return decodeURIComponent(part.slice(separator + 1));
    }
  }
  return null;
}

// Calls that fail at the same moment share one refresh, so that the
// browser does not rotate the refresh token several times in a row.
let pendingRefresh = null;

function refreshTokens() {
  pendingRefresh ??= fetch(config.refreshPath, {
    method: "POST",
    credentials: "same-origin",
  })
    .then((response) => response.ok)
    .finally(() => {
      pendingRefresh = null;
    });
  return pendingRefresh;
}

function send(method, path, body) {
  const headers = { Accept: "application/json" };
  // Read the cookie on every call: a refresh replaces the token.
  const antiCsrfToken = readCookie(config.antiCsrfCookie);
  if (antiCsrfToken !== null) {
    headers[config.antiCsrfHeader] = antiCsrfToken;
  }
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  return fetch(path, init);
}

async function errorCode(response) {
  try {
    return (await response.clone().json()).error;
  } catch {
    return null;
  }
}

async function request(method, path, body) {
  let response = await send(method, path, body);
  if (response.status === 401 && (await errorCode(response)) === "try_refresh_token") {
    if (await refreshTokens()) {
      response = await send(method, path, body);
    }
  }
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("not logged in");
  }
  if (!response.ok) {
    throw new Error(`${method} ${path} failed with HTTP ${response.status}`);
  }
  return response.status === 204 ? null : response.json();
}

function show(id, text) {
  document.getElementById(id).textContent = text;
}

async function run(action) {
  try {
    await action();
    show("status", "");
  } catch (error) {
    show("status", error.message);
  }
}

async function loadState() {
  const state = await request("GET", "/api/state");
  show("current-user", state.user_id);
  show("counter", String(state.counter));
  show("saved-note", state.note);
  document.getElementById("note").value = state.note;
  document.getElementById("app").hidden = false;
}

document.getElementById("increment").addEventListener("click", () =>
  run(async () => {
    const result = await request("POST", "/api/counter");
    show("counter", String(result.counter));
  }),
);

document.getElementById("note-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run(async () => {
    const note = document.getElementById("note").value;
    const result = await request("POST", "/api/note", { note });
    show("saved-note", result.note);
  });
});

document.getElementById("logout").addEventListener("click", () =>
  run(async () => {
    await request("POST", "/auth/logout");
    window.location.assign("/login");
  }),
);

run(loadState);
