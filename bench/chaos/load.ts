/**
 * The request streams of a chaos run: webhooks (valid, redelivered and fuzzed), dispatches,
 * API reads and fuzzed API calls. Each remembers what the server accepted, so the end of
 * the run can check that every accepted thing was kept exactly once.
 */
import fc from "fast-check";
import { apiRequest, enc, webhookRequest } from "../../test/helpers/fuzz-inputs.js";
import { loadFixture, signedWebhook } from "../../test/helpers/sign-webhook.js";
import { API_TOKEN, FIRE_LABEL, REPO, SENDER, WEBHOOK_SECRET } from "./environment.js";
import type { Answer, RequestKind, Traffic } from "./traffic.js";

const auth = { authorization: `Bearer ${API_TOKEN}` };
const jsonAuth = { ...auth, "content-type": "application/json" };

/** A delivery the forge keeps sending until it is answered 2xx, as forges redeliver. */
interface Delivery {
  id: string;
  headers: Record<string, string>;
  body: string;
  fires: boolean;
}

export interface LoadState {
  /** Delivery id -> whether it should fire a run, for every delivery answered 2xx. */
  accepted: Map<string, { fires: boolean }>;
  /** Valid deliveries never answered 2xx after every redelivery. */
  undelivered: string[];
  /** Redeliveries of an accepted delivery answered as new (not `duplicate`). */
  redeliveriesTakenAsNew: number;
  /** Dispatch actor -> run id, for every dispatch answered 201. */
  dispatched: Map<string, number>;
  /** Dispatch actors answered 503 or not at all: a run may or may not exist. */
  dispatchUnsure: string[];
  /** Valid deliveries sent again after a 503 or no answer. */
  redeliveriesAfterFailure: number;
}

export function newLoadState(): LoadState {
  return {
    accepted: new Map(),
    undelivered: [],
    redeliveriesTakenAsNew: 0,
    dispatched: new Map(),
    dispatchUnsure: [],
    redeliveriesAfterFailure: 0,
  };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A 2xx answer; a 503 or no answer is retried by the callers that model a forge. */
const accepted = (answer: Answer | undefined) => answer !== undefined && answer.status < 300;
const retryable = (answer: Answer | undefined) => answer === undefined || answer.status === 503;

export class Load {
  private readonly fuzzedWebhooks: { event: string; delivery: string; body: string }[];
  private readonly fuzzedApiRequests: { method: string; path: string; body?: string }[];
  private validCount = 0;
  private readonly acceptedList: Delivery[] = [];

  constructor(
    private readonly traffic: Traffic,
    readonly state: LoadState,
    private readonly random: () => number,
    seed: number,
    /** Share of valid deliveries that fire a run (the rest match no formula). */
    private readonly fireShare: number,
  ) {
    this.fuzzedWebhooks = fc.sample(webhookRequest(REPO), { seed, numRuns: 2_000 });
    this.fuzzedApiRequests = fc.sample(apiRequest, { seed: seed + 1, numRuns: 1_000 });
  }

  /** One webhook: 60 % fuzzed, else valid (some firing a run), sometimes a redelivery of an accepted one. */
  async webhook(n: number): Promise<void> {
    const r = this.random();
    if (r < 0.6) return this.fuzzedWebhook(n);
    if (r < 0.63 && this.acceptedList.length > 0) {
      const again = this.acceptedList[Math.floor(this.random() * this.acceptedList.length)] as Delivery;
      const answer = await this.deliver("webhook redelivery", again);
      if (answer?.status === 202) this.state.redeliveriesTakenAsNew++;
      return;
    }
    const delivery = this.validDelivery(this.random() < this.fireShare);
    const answer = await this.deliver("webhook valid", delivery);
    if (answer && accepted(answer)) {
      this.state.accepted.set(delivery.id, { fires: delivery.fires });
      if (this.acceptedList.length < 5_000) this.acceptedList.push(delivery);
    } else this.state.undelivered.push(delivery.id);
  }

  /** Sends until 2xx or a final 4xx, redelivering after a 503 or no answer like a forge (at most 8 times). */
  private async deliver(kind: RequestKind, delivery: Delivery): Promise<Answer | undefined> {
    let answer: Answer | undefined;
    for (let attempt = 0; attempt < 8; attempt++) {
      if (attempt > 0) {
        this.state.redeliveriesAfterFailure++;
        await sleep(1_000 + this.random() * 2_000);
      }
      answer = await this.traffic.send(kind, "POST", "/webhooks", { headers: delivery.headers, body: delivery.body });
      if (!retryable(answer)) return answer;
    }
    return answer;
  }

  private validDelivery(fires: boolean): Delivery {
    const k = ++this.validCount;
    let event: string;
    let payload: any;
    if (fires) {
      event = "issues";
      payload = loadFixture("github/issues.labeled.json");
      payload.label.name = FIRE_LABEL;
      payload.issue.labels = [{ ...payload.label }];
      payload.issue.number = 10_000 + k;
    } else if (k % 2 === 0) {
      event = "push";
      payload = loadFixture("github/push.json");
    } else {
      event = "issue_comment";
      payload = loadFixture("github/issue_comment.created.json");
      payload.comment.body = `just a comment ${k}`;
    }
    payload.repository.full_name = REPO;
    payload.sender.login = SENDER;
    const id = `chaos-${k}-${Math.floor(this.random() * 1e9).toString(36)}`;
    const signed = signedWebhook({ forge: "github", event, payload, secret: WEBHOOK_SECRET, deliveryId: id });
    return { id, headers: signed.headers, body: signed.body, fires };
  }

  private async fuzzedWebhook(n: number): Promise<void> {
    const req = this.fuzzedWebhooks[n % this.fuzzedWebhooks.length] as (typeof this.fuzzedWebhooks)[number];
    let delivery = req.delivery;
    // A header value cannot carry every character; what cannot be sent is not a request.
    if (!/^[\t\x20-\x7e]*$/.test(delivery)) delivery = enc(delivery);
    const signed = signedWebhook({
      forge: "github",
      event: req.event,
      payload: req.body,
      secret: WEBHOOK_SECRET,
      deliveryId: `${delivery}-${n}`,
    });
    // A quarter go out with a signature that does not match: those must be 401.
    const headers =
      n % 4 === 0 ? { ...signed.headers, "X-Hub-Signature-256": `sha256=${"0".repeat(64)}` } : signed.headers;
    const answer = await this.traffic.send("webhook fuzzed", "POST", "/webhooks", { headers, body: signed.body });
    // A fuzzed body the server took is a delivery like any other: it must be decided.
    const id = (answer?.body as { delivery?: unknown } | undefined)?.delivery;
    if (answer && accepted(answer) && typeof id === "string") this.state.accepted.set(id, { fires: false });
  }

  /** One dispatch of `work` on one of 8 issues (runs of an issue take turns), tagged by a unique actor. */
  async dispatch(n: number): Promise<void> {
    const actor = `chaos-dispatch-${n}`;
    const answer = await this.traffic.send("dispatch", "POST", "/api/runs", {
      headers: jsonAuth,
      body: JSON.stringify({ formula: "work", project: "demo", issue: 1 + (n % 8), actor }),
    });
    const id = (answer?.body as { id?: unknown } | undefined)?.id;
    if (answer?.status === 201 && typeof id === "number") this.state.dispatched.set(actor, id);
    else if (retryable(answer)) this.state.dispatchUnsure.push(actor);
  }

  /** A well-formed read a dashboard or the CLI makes. */
  async read(n: number): Promise<void> {
    const routes = ["/api/runs?limit=20", "/api/worktrees?state=preserved&limit=50", "/api/deliveries?limit=20"];
    await this.traffic.send("api read", "GET", routes[n % routes.length] as string, { headers: auth });
  }

  async fuzzedApi(n: number): Promise<void> {
    const req = this.fuzzedApiRequests[n % this.fuzzedApiRequests.length] as (typeof this.fuzzedApiRequests)[number];
    await this.traffic.send("api fuzzed", req.method, req.path, {
      headers: jsonAuth,
      ...(req.body === undefined ? {} : { body: req.body }),
    });
  }
}
