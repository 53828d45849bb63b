"""Gymnasium environments of fleetpilot (registered on import)."""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "fleetpilot/ClusterFleet-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="fleetpilot.envs.cluster:ClusterFleetEnv")

__all__ = ["ENV_ID"]
