"""Receives secrets on its command line (as the MLproject templates them), records what it got as hashes,
then waits at a gate the test controls: while it waits, the test reads every process's argv."""

import argparse
import hashlib
import sys

parser = argparse.ArgumentParser()
for name in ("--api-token", "--db-url", "--ready", "--gate", "--out", "--fail"):
    parser.add_argument(name, default="")
args = parser.parse_args()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


if args.out:
    with open(args.out, "w") as f:
        f.write(f"{digest(args.api_token)} {digest(args.db_url)}\n")
if args.ready:
    with open(args.ready, "w") as f:  # a fifo: opens once the test reads it
        f.write("ready\n")
if args.gate:
    with open(args.gate) as f:  # a fifo: returns once the test wrote it
        f.read()
# User code that prints what it got: the launcher masks it in every log and console line.
print(f"got token {args.api_token} and url {args.db_url}", flush=True)
if args.fail == "yes":
    print(f"failing with token {args.api_token} url {args.db_url}", file=sys.stderr)
    sys.exit(4)
