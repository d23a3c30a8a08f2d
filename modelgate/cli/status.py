"""``modelgate status``: the live system as a readable table, from Redis alone."""

from __future__ import annotations

import time
from typing import TextIO

import redis

from modelgate.core.pool_figures import FiguresQuery
from modelgate.core.quality import AlarmState, Totals, figures
from modelgate.core.stats import percentile_ms
from modelgate.core.store import drift as drift_store
from modelgate.core.store import feedback as feedback_store
from modelgate.core.store import heartbeats, jobs, pools, scaling
from modelgate.core.store import lineage as lineage_store
from modelgate.core.store import models as model_store
from modelgate.core.store import traffic as traffic_store
from modelgate.core.store.jobs import JobRecordError, JobSpec, Progress
from modelgate.core.store.models import ControlEvent, ModelState, VersionStatus
from modelgate.core.store.traffic import AgreementTally, GateState, TrafficPolicy

RECENT_DECISIONS = 8


def _states(client: redis.Redis) -> dict[str, ModelState]:
    names = sorted(n.decode() for n in client.smembers(model_store.MODELS))
    states = {}
    for name, raw in zip(names, client.mget([model_store.state(n) for n in names]) if names
                         else [], strict=True):
        if raw is not None:
            try:
                states[name] = ModelState.decode(raw)
            except model_store.StateError:
                continue
    return states


def _pool_ids(client: redis.Redis, states: dict[str, ModelState]) -> list[str]:
    """Every pool the model state names, and any other with a request stream (workers
    started by hand, no decider)."""
    found = {pools.pool_id(m, v) for m, s in states.items() for v in s.versions
             if s.versions[v].status != VersionStatus.UNAVAILABLE}
    found |= {pools.pool_of_stream(key.decode())
              for key in client.scan_iter(match=pools.pools_pattern(), count=500)}
    return sorted(found, key=lambda p: (p.rsplit(":", 1)[0], int(p.rsplit(":", 1)[1])))


def _workers(client: redis.Redis, pool: str) -> list[tuple[str, heartbeats.Heartbeat]]:
    since = time.time() - heartbeats.WORKER_TTL_S
    ids = [w.decode() for w in client.zrangebyscore(pools.worker_set(pool), since, "+inf")]
    pipe = client.pipeline(transaction=False)
    for worker_id in ids:
        pipe.hgetall(heartbeats.heartbeat(worker_id))
    found = []
    for worker_id, fields in zip(ids, pipe.execute(), strict=True):
        beat = heartbeats.Heartbeat.parse(fields)
        if beat is not None:
            found.append((worker_id, beat))
    return found


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(client: redis.Redis, out: TextIO) -> int:
    states = _states(client)
    pool_ids = _pool_ids(client, states)
    lease = client.get(model_store.LEASE)
    mode = model_store.lease_mode(lease)
    print("model control: " + (f"{mode} (a decider holds the lease)" if mode
                               else "no decider runs (versions as the repository had them)"),
          file=out)
    if not pool_ids and not states:
        print("no model pools in this Redis yet (no request stream exists)", file=out)
        _jobs(client, out)
        return 0
    query = FiguresQuery(pool_ids, time.time())
    pipe = client.pipeline(transaction=False)
    query.queue(pipe)
    figures = query.parse(pipe.execute())
    print(f"\n{'pool':<24}{'state':<12}{'workers':>8}{'starting':>9}{'desired':>8}"
          f"{'backlog':>8}{'in/s':>8}{'out/s':>8}{'p95 ms':>8}{'svc ms':>8}", file=out)
    for pool in pool_ids:
        model, version = pool.rsplit(":", 1)
        state = states.get(model)
        found = state.versions.get(version) if state is not None else None
        status = found.status.value if found is not None else "-"
        if state is not None and state.default == version:
            status += "*"
        gauges, rates = figures[pool].gauges, figures[pool].rates
        print(f"{pool:<24}{status:<12}{gauges.live_workers:>8}{gauges.starting_workers:>9}"
              f"{gauges.desired if gauges.desired is not None else '-':>8}{gauges.backlog:>8}"
              f"{rates.demand_per_s:>8.1f}{rates.completed_per_s:>8.1f}"
              f"{_fmt(rates.p95_ms):>8}{_fmt(rates.service_ms, digits=2):>8}", file=out)
    print("  (* the model's default version)", file=out)
    plans = [(pool, plan) for pool in pool_ids if (plan := figures[pool].plan) is not None]
    print("\nbatching (tuned by the workers at load)" + ("" if plans else ": none published"),
          file=out)
    for pool, plan in plans:
        print(f"  {pool:<22} {plan.describe()}", file=out)
    unavailable = [(m, v, s.reason) for m, st in states.items() for v, s in st.versions.items()
                   if s.status == VersionStatus.UNAVAILABLE]
    for model, version, reason in unavailable:
        print(f"  {model}:{version} UNAVAILABLE: {reason}", file=out)
    _traffic(client, states, out)
    changes = [e for _, fields in client.xrevrange(model_store.EVENTS, count=RECENT_DECISIONS)
               if (e := ControlEvent.parse(fields)) is not None]
    print("\nlast version changes" + ("" if changes else ": none"), file=out)
    for event in changes:
        when = time.strftime("%H:%M:%S", time.localtime(event.time))
        print(f"  {when} {event.model}:{event.version or '-':<6} {event.change:<12} "
              f"{event.reason} ({event.by})", file=out)
    print("\nworkers", file=out)
    for pool in pool_ids:
        for worker_id, beat in _workers(client, pool):
            uptime = time.time() - beat.started
            print(f"  {worker_id:<36} {pool:<20} pid {beat.pid:>7} up {uptime:>6.0f}s  "
                  f"processed {beat.processed:>8}  busy {beat.busy:.0%}"
                  + (f"  job rows {beat.job_rows} ({beat.job_chunks} chunks, "
                     f"{beat.job_failed_rows} failed, busy {beat.job_busy:.0%})"
                     if beat.job_chunks else ""), file=out)
    _dead_letters(client, pool_ids, out)
    events = [s for _, fields in client.xrevrange(scaling.EVENTS,
                                                  count=RECENT_DECISIONS * len(pool_ids))
              if (s := scaling.ScalingEvent.parse(fields)) is not None]
    scaled = [e for e in events if e.changes]
    print("\nlast scaling decisions" + ("" if scaled else ": none (steady)"), file=out)
    for decision in scaled[:RECENT_DECISIONS]:
        when = time.strftime("%H:%M:%S", time.localtime(decision.time))
        print(f"  {when} {decision.pool:<16} {decision.current} -> {decision.desired}  "
              f"{decision.reason}", file=out)
    if events:
        print(f"\nlatest tick: {events[0].reason}", file=out)
    _drift(client, pool_ids, out)
    _jobs(client, out)
    _quality(client, states, out)
    return 0


RECENT_JOBS = 10


def _jobs(client: redis.Redis, out: TextIO) -> None:
    """Active jobs and the latest ended ones, with progress; the job store against its
    bounds."""
    active = [j.decode() for j in client.zrange(jobs.ACTIVE, 0, -1)]
    recent = [j.decode() for j in client.zrevrange(jobs.INDEX, 0, RECENT_JOBS - 1)]
    ids = list(dict.fromkeys(active + recent))
    kept = client.zcard(jobs.INDEX)
    holder = client.get(jobs.LEASE)
    print("\njob coordinator: " + (f"{holder.decode()} holds the jobs lease" if holder
                                    else "none holds the jobs lease (jobs wait)"), file=out)
    print(f"batch jobs: {len(active)} active, {kept} kept (at most {jobs.INDEX_MAX:,}, each "
          f"{jobs.RETENTION_S // 3600} h after it ends)" + ("" if ids else "; none"), file=out)
    if not ids:
        return
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.get(jobs.spec(job_id))
        pipe.hgetall(jobs.progress(job_id))
        pipe.strlen(jobs.upload(job_id))
        pipe.hlen(jobs.results(job_id))
    results = pipe.execute()
    uploads = in_flight = 0
    for i, job_id in enumerate(ids):
        raw_spec, raw_progress, upload, pieces = results[4 * i:4 * i + 4]
        uploads += int(upload)
        in_flight += int(pieces)
        try:
            spec, progress = JobSpec.decode(raw_spec or b"{}"), Progress.parse(raw_progress)
        except (JobRecordError, TypeError):
            continue
        total = progress.total or 0
        finished = progress.done + progress.failed
        share = f"{finished / total:.0%}" if total else "-"
        print(f"  {job_id}  {spec.model}:{spec.version:<4} {progress.state:<24} "
              f"{finished:>9}/{total:<9} {share:>5}  failed {progress.failed:>7}  "
              f"{progress.rows_per_s:>9.0f} rows/s", file=out)
    print(f"  job store: uploads {uploads / 2**20:.1f} MiB of the latest jobs (at most "
          f"{jobs.MAX_UPLOAD_BYTES // 2**20} MiB each, {jobs.UPLOADS_MAX_BYTES // 2**20} MiB "
          f"in all), {in_flight} chunk results waiting (at most a window per job)", file=out)


def _dead_letters(client: redis.Redis, pool_ids: list[str], out: TextIO) -> None:
    """Each pool's dead letters against their bound (docs/operations.md, poison pills)."""
    pipe = client.pipeline(transaction=False)
    for pool in pool_ids:
        pipe.xlen(pools.dead_letters(pool))
    for pool, count in zip(pool_ids, pipe.execute(), strict=True):
        if count:
            print(f"\ndead letters {pool}: {count} of {pools.DEAD_LETTER_MAXLEN} kept (for "
                  f"{pools.DEAD_LETTER_MAX_AGE_MS // 86_400_000} days, payloads up to "
                  f"{pools.DEAD_LETTER_PAYLOAD_MAX_BYTES // 1024} KiB) in "
                  f"{pools.dead_letters(pool)}", file=out)


def _traffic(client: redis.Redis, states: dict[str, ModelState], out: TextIO) -> None:
    """Each model's traffic policy, its gate, and agreement of the pair it shadows."""
    names = sorted(states)
    if not names:
        return
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.get(traffic_store.policy(name))
        pipe.get(traffic_store.gate(name))
    raw = pipe.execute()
    lines = []
    for i, name in enumerate(names):
        policy_raw, gate_raw = raw[2 * i], raw[2 * i + 1]
        try:
            policy = TrafficPolicy.decode(policy_raw) if policy_raw else None
            gate = GateState.decode(gate_raw) if gate_raw else None
        except traffic_store.PolicyError:
            continue
        if policy is not None and (policy.weights or policy.shadow):
            mirror = policy.shadow
            lines.append(f"  {name}: weights {policy.weights or '-'}"
                         + (f", shadow v{mirror.version} {mirror.percent:g}%" if mirror else "")
                         + f" (by {policy.by or '?'})")
            default = states[name].default
            if mirror is not None and default is not None:
                tally = AgreementTally.parse(client.hgetall(
                    traffic_store.agreement(name, default, mirror.version, "total")))
                summary = tally.summary()
                lines.append(f"    agreement v{default} vs v{mirror.version}: n {summary['n']}"
                             f", top1 {summary['top1']}, mean |delta| "
                             f"{summary['mean_abs_delta']}, p99 |delta| "
                             f"{summary['p99_abs_delta']}")
        if gate is not None:
            lines.append(f"  {name}: gate {gate.status}, candidate v{gate.candidate} at step "
                         f"{gate.step + 1}: {gate.reason}")
    print("\ntraffic" + ("" if lines else ": every unpinned call to the default version"),
          file=out)
    for line in lines:
        print(line, file=out)


def _drift(client: redis.Redis, pool_ids: list[str], out: TextIO) -> None:
    """Features whose latest drift event is an alert (not cleared)."""
    pipe = client.pipeline(transaction=False)
    for pool in pool_ids:
        pipe.xrevrange(drift_store.alerts(pool), count=200)
    active = []
    for pool, entries in zip(pool_ids, pipe.execute(), strict=True):
        latest: dict[str, drift_store.DriftAlert] = {}
        for _, fields in entries:  # newest first: the first seen per feature is its state
            alert = drift_store.DriftAlert.parse(fields)
            if alert is not None:
                latest.setdefault(alert.feature, alert)
        active += [(pool, alert) for _, alert in sorted(latest.items())
                   if alert.statistic != "cleared"]
    print("\ndrift alerts" + ("" if active else ": none"), file=out)
    for pool, alert in active:
        when = time.strftime("%H:%M:%S", time.localtime(alert.time))
        print(f"  {when} {pool:<16} {alert.feature:<24} {alert.statistic} "
              f"{alert.value} > {alert.threshold}", file=out)


def _quality(client: redis.Redis, states: dict[str, ModelState], out: TextIO) -> None:
    """Stored answers against their bound, and each labelled version's live quality."""
    lines = []
    models = set(states) | {key.decode().split(":")[2] for key in client.scan_iter(
        match=feedback_store.counts("*"), count=500)}
    for model in sorted(models):
        counts = {k.decode(): int(float(v))
                  for k, v in client.hgetall(feedback_store.counts(model)).items()}
        if not counts:
            continue
        held = sum(client.memory_usage(k) or 0 for k in (feedback_store.answers(model),
                                                         feedback_store.times(model)))
        lines.append(f"  {model}: {counts.get('rows', 0):,} answer rows stored of "
                     f"{counts.get('max_rows', 0):,} ({held / 2**20:.1f} MiB; horizon "
                     f"{counts.get('horizon_s', 0)} s); labels {counts.get('matched', 0):,} "
                     f"matched, {counts.get('unknown', 0) + counts.get('expired', 0):,} "
                     f"unknown or expired, {counts.get('invalid', 0):,} invalid"
                     + (f"; {counts['dropped']:,} answers dropped (Redis full)"
                        if counts.get("dropped") else ""))
        prefix = feedback_store.quality(model, "")
        versions = {key.decode()[len(prefix):] for key in client.scan_iter(
            match=feedback_store.quality(model, "*"), count=500)}
        for version in sorted(v for v in versions if v.isdigit()):
            line = _version_quality(client, model, version)
            if line:
                lines.append(f"    v{version}: {line}")
        for _, fields in client.xrevrange(feedback_store.alerts(model), count=3):
            alert = feedback_store.QualityAlert.parse(fields)
            if alert is not None:
                when = time.strftime("%H:%M:%S", time.localtime(alert.time))
                lines.append(f"    {when} v{alert.version} alarm {alert.change}: CUSUM "
                             f"{alert.statistic:.1f} (threshold {alert.threshold:.1f}) after "
                             f"{alert.rows_judged:,} rows vs accuracy "
                             f"{alert.reference_accuracy:.3f}")
    print("\nquality" + ("" if lines else ": no stored answers"), file=out)
    for line in lines:
        print(line, file=out)


def _version_quality(client: redis.Redis, model: str, version: str) -> str | None:
    totals = Totals.parse(client.hgetall(feedback_store.quality(model, version)))
    found = figures(totals)
    if not found["rows"]:
        return None
    alarm = AlarmState.parse(client.hgetall(feedback_store.alarm(model, version)))
    shown = ", ".join(f"{name} {found[name]}" for name in ("accuracy", "log_loss", "ece",
                                                            "mae", "rmse") if name in found)
    judged = (f"; ALERT: CUSUM {alarm.s:.1f} vs reference accuracy {alarm.p0:.3f} "
              f"({alarm.reference})" if alarm.alert and alarm.p0 is not None else "")
    return f"{found['rows']:,} labelled rows since load: {shown}{judged}"


def render_model(client: redis.Redis, model: str, out: TextIO) -> int:
    """One model's versions: where each came from beside how it has done since it loaded."""
    state = _states(client).get(model)
    if state is None:
        print(f"model {model!r} has no state in this Redis (not loaded, or no decider ran)",
              file=out)
        return 1
    registry = lineage_store.RegistryStatus.decode(client.get(lineage_store.registry(model)))
    print(f"model {model}: default version {state.default or '-'}", file=out)
    if registry is not None:
        when = time.strftime("%H:%M:%S", time.localtime(registry.checked_at))
        print(f"  source {registry.source}: registry version {registry.registry_version or '-'}"
              f" is local version {registry.version or '-'} (checked {when})"
              + (f"\n  last check failed, what serves stays: {registry.error}"
                 if registry.error else ""), file=out)
    numbers = sorted(state.versions, key=int, reverse=True)
    pipe = client.pipeline(transaction=False)
    for version in numbers:
        pool = pools.pool_id(model, version)
        pipe.get(lineage_store.lineage(pool))
        pipe.hgetall(lineage_store.totals(pool))
    results = pipe.execute()
    for i, version in enumerate(numbers):
        found = state.versions[version]
        raw = results[2 * i]
        lineage = lineage_store.decode_lineage(raw)
        totals = lineage_store.decode_totals(results[2 * i + 1])
        default = " (default)" if version == state.default else ""
        print(f"\nversion {version}{default}: {found.status.value}"
              + (f" ({found.reason})" if found.reason else "")
              + f"  sha256 {found.sha256[:12] or '-'}", file=out)
        if lineage is None or lineage.empty:
            print("  lineage: none (no MLmodel or metadata.json beside model.onnx)", file=out)
        else:
            registry_entry = lineage.registry
            if registry_entry:
                print(f"  registry: {registry_entry.get('name')} version "
                      f"{registry_entry.get('version')}"
                      + (f" (alias {registry_entry['alias']})"
                         if registry_entry.get("alias") else ""), file=out)
            print(f"  run: {lineage.run_id or '-'}"
                  + (f"  {lineage.run_url()}" if lineage.run_url() else ""), file=out)
            if lineage.params:
                print("  params: " + ", ".join(f"{k}={v}" for k, v in lineage.params.items()),
                      file=out)
            if lineage.metrics:
                print("  training metrics: " + ", ".join(
                    f"{k}={v:.4g}" for k, v in lineage.metrics.items()), file=out)
            for warning in lineage.warnings:
                print(f"  warning: {warning}; serving by the ONNX graph", file=out)
            print(f"  lineage record: {len(raw) / 1024:.1f} KiB of "
                  f"{lineage_store.LINEAGE_MAX_BYTES // 1024} KiB"
                  + (" (truncated: see the version's folder)" if lineage.truncated else ""),
                  file=out)
        if totals:
            calls, errors = totals.get("completed", 0.0), totals.get("errors", 0.0)
            since = time.strftime("%H:%M:%S", time.localtime(totals.get("since", 0.0)))
            rate = f"{errors / calls:.2%}" if calls else "-"
            print(f"  live since {since}: {int(calls)} calls, error rate {rate}, p50 "
                  f"{_fmt(percentile_ms(totals, 0.5))} ms, p99 "
                  f"{_fmt(percentile_ms(totals, 0.99))} ms",
                  file=out)
        else:
            print("  live: no figures yet", file=out)
        quality = _version_quality(client, model, version)
        if quality:
            print(f"  quality: {quality}", file=out)
    return 0
