"""Counts what schemathesis sent and found (its ndjson report) and decides the run: requests,
responses by status class, failures by check, network errors. Exit 1 unless every answer kept
to the spec, none was a 5xx, the server lived, and at least the minimum was sent."""
import collections
import glob
import json
import sys

report_dir, summary_path, min_requests, st_status, alive = sys.argv[1:6]
requests, classes, failures, errors = 0, collections.Counter(), collections.Counter(), collections.Counter()
examples = {}


def walk(node):
    global requests
    if isinstance(node, dict):
        response = node.get("response")
        if isinstance(response, dict) and "status_code" in response:
            requests += 1
            classes[f"{response['status_code'] // 100}xx"] += 1
        failure = node.get("failure")
        if isinstance(failure, dict) and "code" in failure:
            key = f"{failure.get('code')} {failure.get('title')}: {failure.get('operation')}"
            failures[key] += 1
            examples.setdefault(key, failure.get("message", "")[:400])
        if node.get("type") in ("ConnectionError", "TimeoutError", "NetworkError") or "ConnectionError" in str(node.get("type", "")):
            errors[f"{node.get('type')}: {node.get('label', '')}"] += 1
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)


for path in glob.glob(f"{report_dir}/*.ndjson"):
    for line in open(path):
        try:
            walk(json.loads(line))
        except json.JSONDecodeError:
            continue
summary = {
    "requests": requests,
    "responses": dict(classes),
    "failures": dict(failures),
    "failure_examples": examples,
    "network_errors": dict(errors),
    "schemathesis_exit": int(st_status),
    "server_alive": alive == "true",
}
json.dump(summary, open(summary_path, "w"), indent=1)
print(f"fuzz: {requests} requests, responses {dict(classes)}, {sum(failures.values())} failures, "
      f"{sum(errors.values())} network errors, server alive: {alive}")
for key, count in failures.most_common(20):
    print(f"  {count:4} {key}\n       {examples[key][:300]!r}")
for key, count in errors.most_common(10):
    print(f"  {count:4} {key}")
ok = requests >= int(min_requests) and not failures and not errors and classes["5xx"] == 0 and alive == "true"
if requests < int(min_requests):
    print(f"fuzz: fewer than {min_requests} requests")
sys.exit(0 if ok else 1)
