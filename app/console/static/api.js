// The /v1 JSON API as the console calls it: one fetch wrapper that sends the key and turns
// every non-2xx answer into an ApiError carrying the service's own message.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function detailText(body, status) {
  const detail = body && (body.detail ?? body.error?.message);
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${d.field ?? d.loc?.join(".")}: ${d.msg}`).join("; ");
  return `HTTP ${status}`;
}

export class Api {
  constructor(key) {
    this.key = key;
  }

  async request(method, path, body) {
    const headers = { Authorization: `Bearer ${this.key}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      throw new ApiError(0, `the service cannot be reached (${err.message})`);
    }
    const text = await response.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch { parsed = null; }
    if (!response.ok) throw new ApiError(response.status, detailText(parsed, response.status));
    return parsed;
  }

  get(path, params) {
    const query = new URLSearchParams();
    for (const [name, value] of Object.entries(params ?? {})) {
      if (value !== undefined && value !== null && value !== "") query.set(name, value);
    }
    const qs = query.toString();
    return this.request("GET", qs ? `${path}?${qs}` : path);
  }

  post(path, body) {
    return this.request("POST", path, body ?? {});
  }

  // Poll a job until it is done or failed (revert, restore, approve), at most `timeoutMs`.
  async waitJob(jobId, timeoutMs = 120000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const job = await this.get(`/v1/jobs/${jobId}`);
      if (job.status === "done" || job.status === "failed" || Date.now() > deadline) return job;
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
  }
}
