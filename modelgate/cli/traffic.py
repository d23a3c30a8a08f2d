"""``modelgate traffic MODEL``: show a model's traffic (versions, shares, figures, agreement,
the promotion gate), set a new policy, or override the gate -- over HTTP, with the key from
``--key`` or ``MODELGATE_CLIENT_KEY``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, TextIO

import httpx


def _weights(text: str) -> dict[str, int]:
    weights = {}
    for part in text.split(","):
        version, sep, weight = part.strip().partition("=")
        if not sep or not weight.strip().isdigit():
            raise SystemExit(f"modelgate traffic: --weights takes VERSION=WEIGHT pairs like "
                             f"1=90,2=10, not {part!r}")
        weights[version.strip()] = int(weight)
    return weights


def _shadow(text: str) -> dict[str, Any]:
    version, _, percent = text.partition(":")
    try:
        return {"version": version.strip(), "percent": float(percent or 100)}
    except ValueError:
        raise SystemExit(f"modelgate traffic: --shadow takes VERSION:PERCENT like 3:100, not "
                         f"{text!r}") from None


def render(view: dict[str, Any], out: TextIO) -> None:
    print(f"model {view['model']}: default version {view['default']}", file=out)
    policy = view.get("policy")
    if policy:
        shadow = policy.get("shadow")
        print(f"policy (set by {policy['by'] or '?'}): weights {policy['weights'] or '-'}"
              + (f", shadow v{shadow['version']} {shadow['percent']:g}%" if shadow else "")
              + (f", sticky header {policy['sticky_header']}" if policy["sticky_header"]
                 else "") + (f"; {policy['reason']}" if policy.get("reason") else ""), file=out)
    print(f"\n{'version':<9}{'state':<12}{'weight':>7}{'calls/60s':>11}{'errors':>9}"
          f"{'p50 ms':>9}{'p99 ms':>9}", file=out)
    for row in view["versions"]:
        rate = row["error_rate"]
        print(f"{row['version'] + ('*' if row['default'] else ''):<9}{row['state']:<12}"
              f"{row['weight']:>7}{row['calls']:>11}"
              f"{'-' if rate is None else f'{rate:.2%}':>9}"
              f"{row['p50_ms'] if row['p50_ms'] is not None else '-':>9}"
              f"{row['p99_ms'] if row['p99_ms'] is not None else '-':>9}", file=out)
    for pair in view.get("agreement", []):
        print(f"\nagreement v{pair['serving']} vs v{pair['candidate']}: n {pair['n']}, top1 "
              f"{pair['top1']}, mean |delta| {pair['mean_abs_delta']}, p99 |delta| "
              f"{pair['p99_abs_delta']}", file=out)
    gate = view.get("gate")
    if gate:
        print(f"\ngate: candidate v{gate['candidate']} {gate['status']} at step {gate['step']}"
              f": {gate['reason']}", file=out)


def run(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    key = args.key or os.environ.get("MODELGATE_CLIENT_KEY")
    headers = {"authorization": f"Bearer {key}"} if key else {}
    path = f"/v2/models/{args.model}/traffic"
    action = next((a for a in ("promote", "rollback", "pause", "resume") if getattr(args, a)),
                  None)
    settings = any(v is not None for v in (args.weights, args.shadow, args.sticky_header,
                                           args.default))
    with httpx.Client(base_url=args.url, headers=headers, timeout=30.0) as client:
        try:
            if action is not None:
                response = client.post(f"{path}/{action}")
            elif settings:
                body: dict[str, Any] = {"weights": _weights(args.weights) if args.weights
                                        else {}}
                if args.shadow:
                    body["shadow"] = _shadow(args.shadow)
                if args.sticky_header:
                    body["sticky_header"] = args.sticky_header
                if args.default:
                    body["default"] = args.default
                response = client.put(path, json=body)
            else:
                response = client.get(path)
        except httpx.HTTPError as e:
            print(f"modelgate traffic: cannot reach {args.url}: {e}", file=sys.stderr)
            return 1
    if response.status_code != 200:
        try:
            message = response.json().get("error", response.text)
        except json.JSONDecodeError:
            message = response.text
        print(f"modelgate traffic: {response.status_code}: {message}", file=sys.stderr)
        return 1
    view = response.json()
    if "done" in view:
        print(view["done"], file=out)
    render(view, out)
    return 0
