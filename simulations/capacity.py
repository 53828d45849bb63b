"""The capacity model: what one replica of a model can serve, from the goal's latency coefficients.

Used by the simulators, the observation builder, the baselines and the oracle (one definition). The latency
coefficients come from measurements (``docs/simulator.md``); the step-time formula is the kernel's.
"""

from __future__ import annotations

import functools

import numpy as np

from fleetpilot.simulations import kernel as K  # noqa: N812
from fleetpilot.simulations.errors import UserError
from fleetpilot.simulations.goal import ModelSpec

__all__ = ["DEFAULT_TOKENS", "latency_vector", "service_rate_per_replica", "slots_per_replica"]

#: token mix assumed when nothing is known yet (mean input, mean output tokens per request)
DEFAULT_TOKENS = (512.0, 256.0)


def slots_per_replica(m: ModelSpec, input_tokens: float, output_tokens: float) -> int:
    """Concurrent sequences per replica: max_num_seqs, or fewer when the KV cache cannot hold them."""
    per_seq = max(1.0, input_tokens + output_tokens)
    return max(1, min(m.latency.max_num_seqs, int(m.latency.kv_cache_tokens // per_seq)))


def service_rate_per_replica(m: ModelSpec, input_tokens: float, output_tokens: float) -> float:
    """Saturated throughput of one replica in requests per second; cached per model and token mix."""
    return _service_rate(m, round(float(input_tokens), 1), round(float(output_tokens), 1))


@functools.lru_cache(maxsize=65536)
def _service_rate(m: ModelSpec, input_tokens: float, output_tokens: float) -> float:
    """Saturated throughput of one replica in requests per second (used by baselines and the oracle).

    The fixed point ``mu = n / S(mu)``: ``n`` concurrent sequences, each taking its TTFT part plus
    ``output_tokens`` engine steps, the step inflated by the prefill work of ``mu`` admissions per second.
    ``n / S(mu)`` decreases in ``mu``, so bisection finds it.
    """
    n = float(slots_per_replica(m, input_tokens, output_tokens))
    lat = latency_vector(m, input_tokens, output_tokens, capacity=False)
    pf = m.latency.prefill_s_per_token

    def excess(mu: float) -> float:
        t = K.step_time(lat, n, mu * input_tokens * pf)
        return n / (t + pf * input_tokens + output_tokens * t) - mu

    full = K.step_time(lat, n, 0.0) * (1.0 + output_tokens) + pf * input_tokens
    if not full > 0:  # the goal refuses such latency models (goal._Latency); a spec built in code may not
        raise UserError("the latency model gives a request no service time (t0, seq, kv and prefill all zero "
                        "here); expected latency.t0_ms > 0", where=f"model {m.name!r}")
    lo, hi = 0.0, n / full
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return lo


def latency_vector(
    m: ModelSpec, input_tokens: float, output_tokens: float, fixed_service_s: float = 0.0, *, capacity: bool = True
) -> np.ndarray:
    """The kernel's per-pool latency parameters (see ``kernel.L_*``); ``capacity`` fills the saturated rate."""
    lat = m.latency
    v = np.zeros(K.N_LAT)
    v[K.L_T0] = lat.t0_s
    v[K.L_PREFILL] = lat.prefill_s_per_token
    v[K.L_KV] = lat.kv_s_per_token
    v[K.L_SEQ] = lat.seq_s
    v[K.L_IN] = input_tokens
    v[K.L_OUT] = output_tokens
    v[K.L_FIXED] = fixed_service_s
    if capacity and not fixed_service_s:
        v[K.L_MU] = service_rate_per_replica(m, input_tokens, output_tokens)
    return v
