#!/usr/bin/env python3
"""A handler bot for pubbot, small enough to read in a minute: an order-status
flow in three steps, with the conversation state pubbot keeps for it.

    python3 examples/order-status/handler.py 9000 whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
    pubbot handler add orders --url http://127.0.0.1:9000/hook \
        --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
    pubbot rules import examples/order-status/rules.toml

pubbot POSTs one JSON event per message a rule hands over: id (the same on
every retry: deduplicate by it), app_key, account, user, message, rule,
captures, named, state. The answer is JSON: replies (text, image/voice by url,
media_id or local media name, news) and state changes {"set": {...},
"clear": [...]}. Requests are signed the Standard Webhooks way.
"""
import base64, hashlib, hmac, json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

ORDERS = {"42": "shipped, arriving Friday", "7": "being packed"}
SECRET = sys.argv[2] if len(sys.argv) > 2 else "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = base64.b64decode(SECRET.removeprefix("whsec_")) if SECRET.startswith("whsec_") else SECRET.encode()
SEEN = {}  # event id -> answer: a retried event gets the same answer


def verified(headers, body):
    msg_id, ts = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(time.time() - int(ts)) > 300:
        return False
    mac = hmac.new(KEY, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    want = "v1," + base64.b64encode(mac).decode()
    return any(hmac.compare_digest(want, s) for s in headers["webhook-signature"].split())


def answer(event):
    text = (event["message"]["body"].get("content") or "").strip()
    step = event["state"].get("order_step")
    if step == "ask_number":  # step 2: the user gives a number
        status = ORDERS.get(text)
        if status is None:
            return {"replies": [{"type": "text", "text": f"No order {text}. Try again?"}]}
        return {"replies": [{"type": "text", "text": f"Order {text} is {status}."},
                            {"type": "text", "text": "Anything else? (yes/no)"}],
                "state": {"set": {"order_step": "anything_else", "order": text}}}
    if step == "anything_else":  # step 3
        done = {"state": {"clear": ["order_step", "order"]}}
        if text.lower().startswith("y"):
            return {"replies": [{"type": "text", "text": "Which order number?"}],
                    "state": {"set": {"order_step": "ask_number"}}}
        return {"replies": [{"type": "text", "text": "Goodbye!"}], **done}
    # step 1: "order status"
    return {"replies": [{"type": "text", "text": "Which order number?"}],
            "state": {"set": {"order_step": "ask_number"}}}


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        if not verified(self.headers, body):
            self.send_response(401)
            self.end_headers()
            return
        event = json.loads(body)
        reply = SEEN.setdefault(event["id"], answer(event))
        out = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"order-status handler on http://127.0.0.1:{port}/hook", flush=True)
    HTTPServer(("127.0.0.1", port), Hook).serve_forever()
