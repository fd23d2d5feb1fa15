"""The loader worker of a warm slice: its JavaScript, its config, the job frame and its verdicts.

A warm slice runs one ``workerd serve --experimental`` whose only worker is the loader below. It
holds a ``workerLoader`` binding (workerd's Worker Loader) and nothing else. One job is one POST to
the loader carrying a binary frame::

    u32 code length | u32 secret length (0xFFFFFFFF: no secret) | code | secret | inputs

(big-endian lengths). The code is only ever the bytes between the two lengths' bounds: it is never
parsed, concatenated into JavaScript or config, or looked at by the loader. The loader loads it as
the single ES module of a fresh isolate with the cold path's compatibility date and an ``env``
holding only ``secret`` (an ``ArrayBuffer``, as the data binding gives it, and only when the job has
a secret), then POSTs the inputs to it with the URL, ``Host``, ``Connection`` and ``cf`` of its own
request, i.e. what a cold worker sees. The loaded worker cannot reach ``LOADER``: its ``env`` holds
only what is passed, and its outbound ``fetch`` follows workerd's default network rules (loopback
and private addresses refused), the same as on the cold path.

Pre-loading: a PUT carrying a frame without inputs (the code of a job that just ran, and its
secret) has the loader start that code's isolate under the id ``job-pre``: its top level runs
then, as a cold workerd runs it before listening; nothing of it is called. A later POST whose code
and secret are byte for byte the pre-loaded ones runs in that isolate (re-created, with the same
code, if workerd dropped it meanwhile); any other POST gets a fresh isolate. The sandbox sends a
job to a pre-loaded process only when its :func:`preload_key` matches, and the process still
serves exactly one job.

Every answer of the loader carries the :data:`VERDICT_HEADER` (the loader replaces any header of
that name the user's response has, so user code cannot forge it); an answer without it is the
loader's own failure (workerd's bare 500) and raises ``SandboxError``: nothing is submitted.

- ``responded``: the user's response, otherwise unchanged (status, headers, body streamed byte for
  byte);
- ``start-syntax``: the module failed to start with a ``SyntaxError`` (cold: workerd exits before
  listening with a SyntaxError -> code 3);
- ``start-other``: it failed to start for another reason, e.g. a top-level ``throw`` (cold: workerd
  exits before listening -> no submission);
- ``exception``: the user's ``fetch`` threw or its promise can never settle (cold: workerd answers
  500 ``Internal Server Error`` -> code 0 with that body).
- ``no-handler``: the module has no default export with a ``fetch`` handler (cold: workerd drops
  the connection without a response -> no submission); told by a probe worker that imports the
  module, loaded only after a failure that did not come from the user's code.

A start failure is told apart from an exception by the error's ``remote`` flag, which workerd sets
on every error that crosses from the loaded worker: user code can throw an error whose message
looks like a start failure, never one without ``remote``.
"""

from __future__ import annotations

import hashlib
import struct
from enum import Enum

from executor.errors import SandboxError
from executor.sandbox.outbound import SERVICE as OUTBOUND_SERVICE
from executor.sandbox.outbound import OutboundBudget
from executor.sandbox.workerd import COMPATIBILITY_DATE, V8_FLAGS, capnp_string, outbound_parts

VERDICT_HEADER = "x-oyster-loader-verdict"
NO_SECRET = 0xFFFFFFFF
LOADER_ID = "oyster-jobs"
NO_HANDLER = "the module has no default export with a fetch handler"
HANDLER_SHAPE = (
    "a job's code is `export default { async fetch(request, env) { ... } }` (docs/dapp.md)"
)
"""What a job whose module exports no fetch handler fails with (warm and cold alike)."""
NOT_A_HANDLER = b"is not of type 'function or ExportedHandler'"
"""workerd's start failure for a module whose exports are not handlers (e.g. only a constant)."""
COLD_500_BODY = b"Internal Server Error"
"""What a cold workerd answers when the worker throws: the output the warm path reports too."""

LOADER_JS = f"""\
const VERDICT = "{VERDICT_HEADER}";
const NO_SECRET = {NO_SECRET};
let jobs = 0;
let preloaded = null;  // {{ code, secret }} of the PUT that pre-loaded "job-pre", if any

function sameBytes(a, b) {{
  if (a === null || b === null) return a === b;
  if (a.byteLength !== b.byteLength) return false;
  const x = new Uint8Array(a), y = new Uint8Array(b);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}}

function verdict(kind, error) {{
  const text = String((error && error.stack) || error);
  return new Response(text, {{ status: 500, headers: {{ [VERDICT]: kind }} }});
}}

// Only after a failure that did not come from the user's code: does the module default-export
// a fetch handler? (workerd just drops the request of a module without one.)
const PROBE = `import * as user from "main";
export default {{ fetch() {{
  const handler = user.default;
  const fetch = handler && (handler.fetch || (handler.prototype && handler.prototype.fetch));
  return new Response(typeof fetch === "function" ? "yes" : "no");
}} }};`;

async function hasFetchHandler(env, code) {{
  try {{
    const probe = env.LOADER.get("probe-" + jobs, () => ({{
      compatibilityDate: "{COMPATIBILITY_DATE}",
      mainModule: "probe",
      modules: {{ probe: {{ js: PROBE }}, main: {{ js: code }} }},
      env: {{}},
    }}));
    const answer = await probe.getEntrypoint().fetch("http://probe/");
    return (await answer.text()) !== "no";
  }} catch (error) {{
    return true;  // cannot tell: keep the original verdict
  }}
}}

export default {{
  async fetch(request, env) {{
    if (request.method === "GET") {{  // the warm-up request
      return new Response("ready", {{ headers: {{ [VERDICT]: "responded" }} }});
    }}
    const frame = new Uint8Array(await request.arrayBuffer());
    const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
    const codeLength = view.getUint32(0);
    const secretLength = view.getUint32(4);
    let at = 8;
    const code = new TextDecoder().decode(frame.subarray(at, at + codeLength));
    at += codeLength;
    const workerEnv = {{}};
    let secret = null;
    if (secretLength !== NO_SECRET) {{
      secret = frame.slice(at, at + secretLength).buffer;
      workerEnv.secret = secret;
      at += secretLength;
    }}
    const inputs = frame.slice(at);
    const headers = {{ host: request.headers.get("host"), connection: "close" }};
    const job = () => ({{
      compatibilityDate: "{COMPATIBILITY_DATE}",
      mainModule: "main",
      modules: {{ main: {{ js: code }} }},
      env: workerEnv,
      ...(env.BUDGET ? {{ globalOutbound: env.BUDGET }} : {{}}),  // the outbound budget, if any
    }});
    if (request.method === "PUT") {{  // pre-load: start the isolate (its top level), call nothing
      preloaded = {{ code, secret }};
      env.LOADER.get("job-pre", job).getEntrypoint();
      return new Response("preloaded", {{ headers: {{ [VERDICT]: "responded" }} }});
    }}
    // The pre-loaded isolate only for exactly its code and secret; else a fresh one.
    const same =
      preloaded !== null && preloaded.code === code && sameBytes(preloaded.secret, secret);
    jobs += 1;
    const worker = env.LOADER.get(same ? "job-pre" : "job-" + jobs, job);
    let response;
    try {{
      response = await worker.getEntrypoint().fetch(request.url, {{
        method: "POST", body: inputs, headers, cf: request.cf,
      }});
    }} catch (error) {{
      const message = String(error && error.message);
      if (error && error.remote !== true && message.startsWith("Failed to start Worker:")) {{
        const syntax = message.includes("\\nUncaught SyntaxError");
        return verdict(syntax ? "start-syntax" : "start-other", error);
      }}
      if (!(error && error.remote === true) && !(await hasFetchHandler(env, code))) {{
        return verdict("no-handler", error);
      }}
      return verdict("exception", error);
    }}
    try {{
      const out = new Headers(response.headers);
      out.set(VERDICT, "responded");
      return new Response(response.body, {{ status: response.status, headers: out }});
    }} catch (error) {{
      return verdict("exception", error);  // e.g. a status a cold workerd cannot send either
    }}
  }}
}};
"""


def render_loader_config(
    *, loader_file: str, port: int, outbound: OutboundBudget | None = None
) -> str:
    """The config of a warm slice: the loader worker on ``127.0.0.1:<port>``, nothing else (with
    an active ``outbound`` budget, also its counting worker, bound to the loader as ``BUDGET``:
    the loader hands it to the job's isolate as its ``globalOutbound``, never in its ``env``)."""
    services, _ = outbound_parts(outbound)
    budget = f', (name = "BUDGET", service = "{OUTBOUND_SERVICE}")' if services else ""
    return f"""using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [ (name = "main", worker = .loaderWorker){services} ],
  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), service = "main") ],
  v8Flags = [ {", ".join(capnp_string(flag) for flag in V8_FLAGS)} ],
);

const loaderWorker :Workerd.Worker = (
  modules = [ (name = "loader", esModule = embed {capnp_string(loader_file)}) ],
  compatibilityDate = "{COMPATIBILITY_DATE}",
  compatibilityFlags = ["experimental"],
  bindings = [ (name = "LOADER", workerLoader = (id = "{LOADER_ID}")){budget} ],
);
"""


def preload_key(code: bytes, secret_id: int, secret: bytes | None) -> bytes:
    """What a pre-loaded warm process was loaded with: a job may use it only if its own key is
    the same (the code and the secret, by their digests, and the secret's id)."""
    digest = hashlib.sha256(code)
    digest.update(secret_id.to_bytes(32, "big"))
    digest.update(b"\x00" if secret is None else b"\x01" + hashlib.sha256(secret).digest())
    return digest.digest()


def encode_frame(code: bytes, inputs: bytes, secret: bytes | None) -> bytes:
    """The loader's request body for one job (see the module docstring)."""
    if len(code) >= NO_SECRET or (secret is not None and len(secret) >= NO_SECRET):
        raise SandboxError("code or secret too large for the loader frame (4 GiB)")
    secret_length = NO_SECRET if secret is None else len(secret)
    return b"".join((struct.pack(">II", len(code), secret_length), code, secret or b"", inputs))


class Verdict(Enum):
    """How the loader's call into the job's worker ended."""

    RESPONDED = "responded"
    START_SYNTAX = "start-syntax"
    START_OTHER = "start-other"
    EXCEPTION = "exception"
    NO_HANDLER = "no-handler"

    @classmethod
    def from_header(cls, value: str | None) -> Verdict:
        if value is None:
            raise SandboxError("the loader failed: its answer carries no verdict")
        try:
            return cls(value)
        except ValueError:
            raise SandboxError(f"unknown loader verdict {value!r}") from None
