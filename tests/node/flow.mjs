// Run the sessiond login-to-logout flow from Node.js, using only the .proto
// file: no generated code and no sessiond package.
//
// Usage: node tests/node/flow.mjs HOST:PORT JWKS_URL
//
// Prints one JSON line: {"ok", "checks" (name to pass or fail), "failures",
// and the values tests/e2e/test_nodejs_client.py asserts on}. Exits 1 when
// any check fails or a call fails unexpectedly, and 2 on a usage error.
// The output never contains tokens.

import path from "node:path";
import { fileURLToPath } from "node:url";
import { isDeepStrictEqual } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from "jose";
import protobuf from "protobufjs";

const PROTOS_DIR = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  "../../protos",
);
const CALL_TIMEOUT_MS = 10_000;
const JWKS_TIMEOUT_MS = 5_000;
const ISSUER = "sessiond";

// 2^53 + 1 and 2^64 + 1: a JavaScript number cannot hold either exactly, so
// these digits survive only if every hop keeps the JSON text as text.
const BIG_IN_PAYLOAD = "9007199254740993";
const BIG_IN_DATA = "18446744073709551617";
const USER_ID = "node-user-ユーザー";
const PAYLOAD_JSON =
  `{"role":"editor","big":${BIG_IN_PAYLOAD},"name":"Zoë 🚀",` +
  `"nested":{"list":[1,{"deep":null}],"flag":true}}`;
const DATA_JSON =
  `{"cart":[{"sku":"книга-7","qty":2}],"note":"naïve café ☕","counter":${BIG_IN_DATA}}`;
const UPDATED_DATA_JSON =
  `{"cart":[],"note":"更新済み","counter":${BIG_IN_DATA},` +
  `"history":[{"at":1,"tags":["a","ß"]}]}`;

// Loading options that matter: keepCase keeps the proto's snake_case field
// names, and longs: String turns int64 fields (expiry_ms, data_version) into
// decimal strings instead of lossy numbers.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTOS_DIR],
};

// google.rpc.Status and google.rpc.ErrorInfo, as the daemon sends them in
// the grpc-status-details-bin trailer. Detail has the wire layout of
// google.protobuf.Any, and a message name never travels on the wire.
const STATUS_PROTO = `
syntax = "proto3";
package google.rpc;
message Detail { string type_url = 1; bytes value = 2; }
message Status { int32 code = 1; string message = 2; repeated Detail details = 3; }
message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`;
const statusRoot = protobuf.parse(STATUS_PROTO, { keepCase: true }).root;
const StatusMessage = statusRoot.lookupType("google.rpc.Status");
const ErrorInfoMessage = statusRoot.lookupType("google.rpc.ErrorInfo");
const ERROR_INFO_TYPE_URL = "type.googleapis.com/google.rpc.ErrorInfo";

const checks = {};
const failures = [];
const results = { checks, failures };

function expect(name, passed, detail) {
  checks[name] = Boolean(passed);
  if (!passed) {
    failures.push(detail === undefined ? name : `${name}: ${detail}`);
  }
}

function expectEqual(name, actual, expected) {
  expect(
    name,
    isDeepStrictEqual(actual, expected),
    `got ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`,
  );
}

// Check a JSON text that the daemon returned: the big integer keeps all its
// digits, and the value equals what was sent.
function expectJsonText(name, text, sentText, bigInteger) {
  expect(
    `${name} keeps big integer`,
    typeof text === "string" && new RegExp(`:\\s*${bigInteger}\\b`).test(text),
    `${bigInteger} is missing from ${text}`,
  );
  expectEqual(`${name} equals sent value`, JSON.parse(text), JSON.parse(sentText));
}

// Check that VerifySession returned no replacement, without printing one.
function expectNoNewAccessToken(name, response) {
  expect(
    `${name} returns no new_access_token`,
    response.new_access_token === null,
    "the response has a new_access_token",
  );
}

function expectFutureMs(name, value) {
  expect(
    `${name} is a decimal string`,
    typeof value === "string" && /^[0-9]+$/.test(value),
    `got ${JSON.stringify(value)} of type ${typeof value}`,
  );
  expect(
    `${name} is in the future`,
    typeof value === "string" && BigInt(value) > BigInt(Date.now()),
    `got ${value}`,
  );
}

function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) ?? String(code);
}

function invoke(client, method, request) {
  return new Promise((resolve, reject) => {
    const options = { deadline: Date.now() + CALL_TIMEOUT_MS };
    client[method](request, options, (error, response) => {
      if (error) {
        reject(error);
      } else {
        resolve(response);
      }
    });
  });
}

// Decode google.rpc.ErrorInfo from the status details of a failed call.
// Callers branch on the reason, because the message text may change.
function errorInfoOf(error) {
  const [details] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (details === undefined) {
    return null;
  }
  const status = StatusMessage.decode(details);
  const detail = status.details.find((any) => any.type_url === ERROR_INFO_TYPE_URL);
  if (detail === undefined) {
    return null;
  }
  const info = ErrorInfoMessage.decode(detail.value);
  return {
    code: statusName(error.code),
    details_code: statusName(status.code),
    reason: info.reason,
    domain: info.domain,
    metadata: { ...info.metadata },
  };
}

// Make a call that must fail, and return the decoded error.
async function invokeFailing(client, method, request) {
  try {
    await invoke(client, method, request);
  } catch (error) {
    if (error.code === undefined) {
      throw error;
    }
    return errorInfoOf(error) ?? { code: statusName(error.code), reason: null };
  }
  return { code: "OK", reason: null };
}

function expectError(name, failure, code, reason) {
  expectEqual(`${name} code`, failure.code, code);
  expectEqual(`${name} reason`, failure.reason, reason);
}

// Return the code of the error a promise rejects with, or "accepted".
function rejectionCode(promise) {
  return promise.then(
    () => "accepted",
    (error) => error.code,
  );
}

function rawPayloadOf(jwt) {
  return Buffer.from(jwt.split(".")[1], "base64url").toString("utf8");
}

async function runLoginFlow(client) {
  const created = await invoke(client, "CreateSession", {
    user_id: USER_ID,
    access_token_payload_json: PAYLOAD_JSON,
    session_data_json: DATA_JSON,
  });
  const handle = created.session.session_handle;
  results.session_handle = handle;
  results.user_id = created.session.user_id;
  expectEqual("create user_id", created.session.user_id, USER_ID);
  const createdPayload = created.session.access_token_payload_json;
  expectJsonText("create payload", createdPayload, PAYLOAD_JSON, BIG_IN_PAYLOAD);
  expectFutureMs("create access expiry_ms", created.access_token.expiry_ms);
  expectFutureMs("create refresh expiry_ms", created.refresh_token.expiry_ms);
  expect("create anti_csrf_token set", created.anti_csrf_token !== null);
  const firstRefresh = created.refresh_token.token;
  const antiCsrf = created.anti_csrf_token.token;

  const verified = await invoke(client, "VerifySession", {
    access_token: created.access_token.token,
    anti_csrf_token: antiCsrf,
  });
  expectEqual("verify session_handle", verified.session.session_handle, handle);
  expectNoNewAccessToken("verify", verified);
  const verifiedPayload = verified.session.access_token_payload_json;
  expectJsonText("verify payload", verifiedPayload, PAYLOAD_JSON, BIG_IN_PAYLOAD);

  const noCsrf = await invokeFailing(client, "VerifySession", {
    access_token: created.access_token.token,
  });
  expectError("verify without anti-CSRF", noCsrf, "UNAUTHENTICATED", "TRY_REFRESH_TOKEN");

  const data = await invoke(client, "GetSessionData", { session_handle: handle });
  expectJsonText("read data", data.session_data_json, DATA_JSON, BIG_IN_DATA);
  expectEqual("read data_version", data.data_version, "1");

  const updated = await invoke(client, "UpdateSessionData", {
    session_handle: handle,
    session_data_json: UPDATED_DATA_JSON,
  });
  expectEqual("update data_version", updated.data_version, "2");
  const reread = await invoke(client, "GetSessionData", { session_handle: handle });
  expectJsonText("reread data", reread.session_data_json, UPDATED_DATA_JSON, BIG_IN_DATA);
  expectEqual("reread data_version", reread.data_version, "2");

  const refreshed = await invoke(client, "RefreshSession", { refresh_token: firstRefresh });
  expectEqual("refresh session_handle", refreshed.session.session_handle, handle);
  expect("refresh rotates token", refreshed.refresh_token.token !== firstRefresh);
  expectFutureMs("refresh access expiry_ms", refreshed.access_token.expiry_ms);
  const refreshedPayload = refreshed.session.access_token_payload_json;
  expectJsonText("refresh payload", refreshedPayload, PAYLOAD_JSON, BIG_IN_PAYLOAD);

  // The first use of the access token issued with the child refresh token
  // makes the child the stored token and returns a replacement access token.
  const promoted = await invoke(client, "VerifySession", {
    access_token: refreshed.access_token.token,
    anti_csrf_token: refreshed.anti_csrf_token.token,
  });
  expectEqual("promote session_handle", promoted.session.session_handle, handle);
  expect("promote returns new_access_token", promoted.new_access_token !== null);
  const currentAccess = promoted.new_access_token?.token ?? refreshed.access_token.token;
  const steady = await invoke(client, "VerifySession", {
    access_token: currentAccess,
    anti_csrf_token: refreshed.anti_csrf_token.token,
  });
  expectNoNewAccessToken("verify replacement", steady);

  return {
    handle,
    firstAccess: created.access_token.token,
    firstRefresh,
    childRefresh: refreshed.refresh_token.token,
    currentAccess,
    antiCsrf: refreshed.anti_csrf_token.token,
  };
}

// Verify access tokens with jose against the daemon's JWKS URL. This step
// makes HTTP requests only, no gRPC call.
async function verifyLocally(jwksUrl, tokens, handle) {
  const jwks = createRemoteJWKSet(new URL(jwksUrl), { timeoutDuration: JWKS_TIMEOUT_MS });
  await jwks.reload();
  const { kid } = decodeProtectedHeader(tokens[0]);
  const key = jwks.jwks().keys.find((candidate) => candidate.kid === kid);
  expect("jwks has the token's kid", key !== undefined, `kid ${kid} not in the JWK Set`);
  expect("jwks key has alg", typeof key?.alg === "string", `key ${JSON.stringify(key)}`);
  results.jwt_alg = key?.alg ?? null;
  const options = { issuer: ISSUER, algorithms: [key.alg] };

  for (const [index, token] of tokens.entries()) {
    const { payload, protectedHeader } = await jwtVerify(token, jwks, options);
    expectEqual(`jwt ${index} alg`, protectedHeader.alg, key.alg);
    expectEqual(`jwt ${index} sub`, payload.sub, USER_ID);
    expectEqual(`jwt ${index} sid`, payload.sid, handle);
    expectEqual(`jwt ${index} iss`, payload.iss, ISSUER);
    expectEqual(`jwt ${index} role`, payload.role, "editor");
    expectEqual(`jwt ${index} name`, payload.name, "Zoë 🚀");
    expectEqual(`jwt ${index} nested`, payload.nested, { list: [1, { deep: null }], flag: true });
    expect(
      `jwt ${index} keeps big integer`,
      new RegExp(`"big":\\s*${BIG_IN_PAYLOAD}\\b`).test(rawPayloadOf(token)),
      "the JWT payload lost digits",
    );
  }

  const [header, body, signature] = tokens[0].split(".");
  const flipped = (signature[0] === "A" ? "B" : "A") + signature.slice(1);
  const tampered = await rejectionCode(jwtVerify(`${header}.${body}.${flipped}`, jwks, options));
  expectEqual("jwt tampered signature", tampered, "ERR_JWS_SIGNATURE_VERIFICATION_FAILED");

  const otherAlg = key.alg === "RS256" ? "ES256" : "RS256";
  const otherAlgOptions = { issuer: ISSUER, algorithms: [otherAlg] };
  const wrongAlg = await rejectionCode(jwtVerify(tokens[0], jwks, otherAlgOptions));
  expectEqual("jwt other alg pinned", wrongAlg, "ERR_JOSE_ALG_NOT_ALLOWED");

  const otherIssuerOptions = { issuer: "someone-else", algorithms: [key.alg] };
  const wrongIssuer = await rejectionCode(jwtVerify(tokens[0], jwks, otherIssuerOptions));
  expectEqual("jwt other issuer", wrongIssuer, "ERR_JWT_CLAIM_VALIDATION_FAILED");
}

async function detectTheft(client, flow) {
  // The child was used (promoted), so the first refresh token is a replay.
  const theft = await invokeFailing(client, "RefreshSession", { refresh_token: flow.firstRefresh });
  results.theft = theft;
  expectError("replay first refresh token", theft, "UNAUTHENTICATED", "TOKEN_THEFT_DETECTED");
  expectEqual("theft details code", theft.details_code, "UNAUTHENTICATED");
  expectEqual("theft domain", theft.domain, "sessiond");
  expectEqual("theft metadata", theft.metadata, { session_handle: flow.handle, user_id: USER_ID });

  // Theft detection revoked the session, so its newest tokens fail too.
  const afterTheft = await invokeFailing(client, "RefreshSession", {
    refresh_token: flow.childRefresh,
  });
  expectError("refresh after theft", afterTheft, "UNAUTHENTICATED", "UNAUTHORISED");
  const checked = await invokeFailing(client, "VerifySession", {
    access_token: flow.currentAccess,
    anti_csrf_token: flow.antiCsrf,
    check_database: true,
  });
  expectError("verify with database after theft", checked, "UNAUTHENTICATED", "UNAUTHORISED");
  const revokedAgain = await invoke(client, "RevokeSession", { session_handle: flow.handle });
  expectEqual("revoke after theft", revokedAgain.revoked, false);
}

async function revokeSession(client) {
  const created = await invoke(client, "CreateSession", { user_id: USER_ID });
  const handle = created.session.session_handle;
  results.revoked_session_handle = handle;
  expectEqual("default payload", created.session.access_token_payload_json, "{}");
  const data = await invoke(client, "GetSessionData", { session_handle: handle });
  expectEqual("default data", data.session_data_json, "{}");

  const revoked = await invoke(client, "RevokeSession", { session_handle: handle });
  expectEqual("revoke", revoked.revoked, true);
  const repeated = await invoke(client, "RevokeSession", { session_handle: handle });
  expectEqual("revoke twice", repeated.revoked, false);
  const checked = await invokeFailing(client, "VerifySession", {
    access_token: created.access_token.token,
    anti_csrf_token: created.anti_csrf_token.token,
    check_database: true,
  });
  expectError("verify with database after revoke", checked, "UNAUTHENTICATED", "UNAUTHORISED");
  const readAfterRevoke = await invokeFailing(client, "GetSessionData", { session_handle: handle });
  expectError("read data after revoke", readAfterRevoke, "UNAUTHENTICATED", "UNAUTHORISED");
}

async function main(address, jwksUrl) {
  const definition = protoLoader.loadSync("sessiond/v1/session.proto", LOADER_OPTIONS);
  const { SessionService } = grpc.loadPackageDefinition(definition).sessiond.v1;
  const client = new SessionService(address, grpc.credentials.createInsecure());
  try {
    const flow = await runLoginFlow(client);
    await verifyLocally(jwksUrl, [flow.firstAccess, flow.currentAccess], flow.handle);
    await detectTheft(client, flow);
    await revokeSession(client);
  } finally {
    client.close();
  }
}

const [address, jwksUrl] = process.argv.slice(2);
if (address === undefined || jwksUrl === undefined) {
  process.stderr.write("usage: node flow.mjs HOST:PORT JWKS_URL\n");
  process.exit(2);
}
try {
  await main(address, jwksUrl);
} catch (error) {
  const code = error.code === undefined ? "" : ` (${statusName(error.code)})`;
  failures.push(`unexpected error${code}: ${error.message}`);
}
results.ok = failures.length === 0;
process.stdout.write(JSON.stringify(results) + "\n");
process.exitCode = results.ok ? 0 : 1;
